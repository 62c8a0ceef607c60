"""The proxy's configuration (deploy/nginx/) in a real nginx in front of a real `idcscan api`,
rendered by its entry point in compose (deploy/nginx/start.sh). Slow clients do not reach the
API, an oversize body is refused by the proxy with the API's problem type before any of it is
sent on, and an upload streams through.

Skipped where no nginx is installed (`apt-get install nginx-light` on Debian)."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, SAMPLE_SVS, service_missing
from tests.processes import free_port, idcscan_cli, idcscan_process, wait_until_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NGINX = shutil.which("nginx") or next(
    (str(p) for p in (Path("/usr/sbin/nginx"), Path("/usr/local/sbin/nginx")) if p.exists()), None
)
DEPLOY = ROOT / "deploy" / "nginx"
UPLOAD_LIMIT = 2 * 1024**2


def render(env: dict[str, str], out: Path) -> str:
    """The template as the proxy's entry point renders it in compose (start.sh)."""
    template = DEPLOY / "templates" / "default.conf.template"
    subprocess.run(
        ["sh", str(DEPLOY / "start.sh"), str(template), str(out)],
        env=env,
        capture_output=True,
        check=True,
    )
    return out.read_text()


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """(proxy URL, API key, CA file) with `idcscan api` behind nginx."""
    if NGINX is None:
        service_missing("nginx is not installed (Debian: apt-get install nginx-light)")
    from tests.worker.models import build_model

    data = tmp_path / "data"
    env = {"IDCSCAN_DATA_DIR": str(data), "IDCSCAN_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)}
    idcscan_cli(env, "db", "upgrade")
    idcscan_cli(env, "models", "register", str(build_model(tmp_path / "tiny.onnx")), "--activate")
    key = idcscan_cli(env, "clients", "add", "hospital").strip().splitlines()[-1]

    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"),
            *("-keyout", str(certs / "tls.key"), "-out", str(certs / "tls.crt")),
        ],
        check=True,
        capture_output=True,
    )
    api_port, proxy_port = free_port(), free_port()
    rendered = render(
        {
            "IDCSCAN_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
            "NGINX_API_UPSTREAM": f"127.0.0.1:{api_port}",
        },
        tmp_path / "rendered.conf",
    )
    # What differs from the container: the port it listens on and where its files are.
    rendered = rendered.replace("listen 8443 ssl;", f"listen 127.0.0.1:{proxy_port} ssl;")
    rendered = rendered.replace("/etc/nginx/certs/", f"{certs}/")
    prefix = tmp_path / "nginx"
    rendered = rendered.replace("/var/log/nginx/", f"{prefix}/")
    prefix.mkdir()
    (prefix / "idcscan.conf").write_text(rendered)
    (prefix / "nginx.conf").write_text(
        "daemon off;\nworker_processes 1;\n"
        f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"  access_log off;\n  client_body_temp_path {prefix}/body;\n"
        f"  proxy_temp_path {prefix}/proxy;\n"
        f"  include {prefix}/idcscan.conf;\n"
        "}\n"
    )
    api_log = tmp_path / "api.log"
    args = ["api", "--port", str(api_port), "--workers", "1", "--threads", "4"]
    with (
        idcscan_process(args, env, api_log),
        open(prefix / "stdout.log", "wb") as out,
    ):
        wait_until_up(f"http://127.0.0.1:{api_port}", api_log)
        nginx = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"https://localhost:{proxy_port}"
            deadline = time.monotonic() + 20
            while True:
                try:
                    requests.get(url + "/healthz", verify=certs / "tls.crt", timeout=2)
                    break
                except requests.RequestException:
                    if time.monotonic() > deadline or nginx.poll() is not None:
                        log = (prefix / "error.log").read_text(errors="replace")
                        pytest.fail(f"nginx did not come up:\n{log[-3000:]}")
                    time.sleep(0.2)
            yield url, key, certs / "tls.crt"
        finally:
            nginx.terminate()
            nginx.wait(10)
    assert not list((data / "storage").glob("staging/*"))


def test_slow_clients_never_reach_the_api(proxied: tuple[str, str, Path]) -> None:
    url, _key, ca = proxied
    port = int(url.rsplit(":", 1)[1])
    with ExitStack() as stack:
        opened = time.monotonic()
        clients = []
        for _ in range(16):  # the start of a TLS handshake each, then silence
            client = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            client.sendall(b"\x16\x03\x01")
            clients.append(client)
        time.sleep(0.5)
        for _ in range(3):
            started = time.monotonic()
            assert requests.get(url + "/healthz", verify=ca, timeout=5).status_code == 200
            assert time.monotonic() - started < 3
        # The proxy drops them at its client_header_timeout (10 s), which bounds the handshake.
        clients[0].settimeout(20)
        assert clients[0].recv(100) == b""
        assert time.monotonic() - opened < 10 + 3


def test_an_oversize_body_is_refused_by_the_proxy(proxied: tuple[str, str, Path]) -> None:
    url, key, ca = proxied
    from idcscan.api.upload import MAX_LABELS_BYTES

    limit = UPLOAD_LIMIT + MAX_LABELS_BYTES + 1024**2
    # The head alone, announcing one byte over the limit; the proxy answers before any body.
    host, port = url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=str(ca))
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
    try:
        connection.putrequest("POST", "/v1/jobs")
        connection.putheader("Authorization", f"Bearer {key}")
        connection.putheader("Content-Type", "multipart/form-data; boundary=b")
        connection.putheader("Content-Length", str(limit + 1))
        connection.endheaders()
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 413
    assert response.getheader("Content-Type") == "application/problem+json"
    assert body["type"] == "urn:idcscan:problem:upload-too-large"
    jobs = requests.get(url + "/v1/jobs", headers={"Authorization": f"Bearer {key}"}, verify=ca)
    assert jobs.json()["jobs"] == []


def test_an_upload_streams_through_to_the_api(proxied: tuple[str, str, Path]) -> None:
    url, key, ca = proxied
    with SAMPLE_SVS.open("rb") as slide:
        response = requests.post(
            url + "/v1/jobs",
            files={"slide": ("slide.svs", slide)},
            headers={"Authorization": f"Bearer {key}"},
            verify=ca,
            timeout=60,
        )
    assert response.status_code == 202, response.text
    assert response.json()["slide_format"] == "aperio"


def test_the_access_log_holds_no_path(proxied: tuple[str, str, Path], tmp_path: Path) -> None:
    """A viewer link's token is in its path: the proxy's access lines leave paths out."""
    url, _key, ca = proxied
    canary = f"CANARY-{uuid.uuid4().hex}"
    answer = requests.get(f"{url}/view/{canary}/job.json?q={canary}", verify=ca, timeout=10)
    assert answer.status_code == 403
    log = (tmp_path / "nginx" / "access.log").read_text()
    assert '"GET" 403' in log
    assert canary not in log and "/view/" not in log
