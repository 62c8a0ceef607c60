"""Everything the service writes holds patient data and is its user's alone: files 0600, folders
0700. Checked on the real files of the embedded service (`idcscan api` and `idcscan worker` as
processes, SQLite database and broker): a slide uploaded, one named by slide_uri, a staged upload
caught half-way, the stored blobs and the worker's results."""

from __future__ import annotations

import socket
import stat
import time
from pathlib import Path

import pytest
import requests

from tests.api.conftest import KOMBU_NOLOAD, plain_tiff
from tests.conftest import SAMPLE_SVS
from tests.processes import (
    free_port,
    idcscan_cli,
    idcscan_process,
    wait_for_line,
    wait_until_up,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, KOMBU_NOLOAD]


def modes(folder: Path) -> dict[str, str]:
    """Every path under `folder` (itself included) with its permission bits, as octal text."""
    found = {".": oct(stat.S_IMODE(folder.stat().st_mode))}
    for path in folder.rglob("*"):
        found[str(path.relative_to(folder))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def multipart(slide: bytes) -> tuple[bytes, bytes]:
    """A multipart body with one `slide` part, split in two halves."""
    head = (
        b'--b\r\nContent-Disposition: form-data; name="slide"; filename="s.svs"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    body = head + slide + b"\r\n--b--\r\n"
    middle = len(head) + len(slide) // 2
    return body[:middle], body[middle:]


def test_stored_slides_results_staging_and_databases_are_private(tmp_path: Path) -> None:
    from tests.worker.models import build_model

    data = tmp_path / "data"
    share = tmp_path / "share"
    env = {
        "IDCSCAN_DATA_DIR": str(data),
        "IDCSCAN_SLIDE_URI_ROOT": str(share),
        "IDCSCAN_INFERENCE_THREADS": "1",
    }
    idcscan_cli(env, "db", "upgrade")
    idcscan_cli(env, "models", "register", str(build_model(tmp_path / "tiny.onnx")), "--activate")
    added = idcscan_cli(env, "clients", "add", "hospital").strip().splitlines()
    key = added[-1]
    client_id = added[0].split()[1]
    (share / f"client-{client_id}").mkdir(parents=True)
    plain_tiff(share / f"client-{client_id}" / "case.tiff", mpp=4.0)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {key}"}
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    with (
        idcscan_process(["api", "--port", str(port), "--workers", "1"], env, api_log),
        idcscan_process(["worker", "--concurrency=1"], env, worker_log),
    ):
        wait_until_up(url, api_log)
        # Both create the embedded broker's queue on first use: let the worker be first.
        wait_for_line(worker_log, "ready.")
        # An upload caught half-way: its staged file is already private.
        first, rest = multipart(SAMPLE_SVS.read_bytes())
        staging = data / "storage" / "staging"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as upload:
            upload.sendall(
                b"POST /v1/jobs HTTP/1.1\r\nHost: idcscan\r\n"
                + f"Authorization: Bearer {key}\r\n".encode()
                + b"Content-Type: multipart/form-data; boundary=b\r\n"
                + f"Content-Length: {len(first) + len(rest)}\r\n\r\n".encode()
                + first
            )
            deadline = time.monotonic() + 20
            while not (staging.is_dir() and any(staging.iterdir())):
                assert time.monotonic() < deadline, api_log.read_text()[-2000:]
                time.sleep(0.05)
            staged = modes(staging)
            upload.sendall(rest)
            assert b" 202 " in upload.recv(200)
        assert set(staged.values()) == {"0o700", "0o600"} and staged["."] == "0o700", staged

        by_uri = requests.post(
            url + "/v1/jobs", json={"slide_uri": "case.tiff"}, headers=auth, timeout=30
        )
        assert by_uri.status_code == 202, by_uri.text
        deadline = time.monotonic() + 120
        job = by_uri.json()
        while job["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, worker_log.read_text()[-3000:]
            time.sleep(0.25)
            job = requests.get(url + f"/v1/jobs/{job['id']}", headers=auth, timeout=5).json()
        assert job["status"] == "succeeded", (job, worker_log.read_text()[-3000:])

    written = modes(data)
    assert any(name.startswith("storage/results/") for name in written), written
    assert any(name.startswith("storage/slides/") for name in written), written
    assert {"idcscan.sqlite3", "broker.sqlite3"} <= set(written), written
    wrong = {
        name: mode
        for name, mode in written.items()
        if mode != ("0o700" if (data / name).is_dir() else "0o600")
    }
    assert wrong == {}
