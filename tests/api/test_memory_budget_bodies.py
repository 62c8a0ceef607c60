"""Every request body is bounded (security issue 9, H2): hostile bodies sent to a real `idcscan api`
(gunicorn, one worker process) are refused, and the worker's peak memory stays under a budget.

The bodies are generated while they are sent, never held: a 400 MB JSON body announced by its
length and another sent chunked (which once skipped every size check), multipart bodies whose
boundary never comes, whose part headers never end, whose text field or slide never ends, and a
body too large for a key that is not even valid. The client stops sending as soon as the API
answers, as a real client would; a server that buffered the body answers only after all of it.
The peak is the gunicorn worker's VmHWM (high-water mark of its resident memory, /proc/PID/status).
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from idcscan.core.db import Client, Job, make_engine
from idcscan.core.migrate import upgrade
from tests.processes import free_port, idcscan_cli, idcscan_process, wait_until_up

pytestmark = [pytest.mark.slow]

BUDGET_BYTES = 300 * 1024**2
"""The API worker's peak resident memory may not pass this, whatever it is sent."""
HOSTILE_BYTES = 400 * 1024**2
PIECE = b"A" * (1 << 20)  # one generated megabyte, sent again and again
BOUNDARY = "hostileboundary"


@dataclass
class Hostile:
    """One hostile request: what it sends, and the answer it must get."""

    name: str
    method: str
    path: str
    headers: dict[str, str]
    head: bytes  # sent first, then PIECE until the API answers or `total` bytes went out
    total: int | None  # None: sent chunked
    status: int
    problem: str


def _multipart_head(part_headers: str) -> bytes:
    return f"--{BOUNDARY}\r\n{part_headers}".encode()


MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
JSON = {"Content-Type": "application/json"}
HOSTILE = [
    Hostile("400 MB JSON, length announced", "POST", "/v1/jobs", JSON, b'{"slide_uri": "',
            HOSTILE_BYTES, 413, "body-too-large"),
    Hostile("400 MB JSON, chunked", "POST", "/v1/jobs", JSON, b'{"slide_uri": "', None, 413,
            "body-too-large"),
    Hostile("400 MB JSON new client, chunked", "POST", "/v1/clients", JSON, b'{"name": "', None,
            413, "body-too-large"),
    Hostile("multipart whose boundary never comes, chunked", "POST", "/v1/jobs", MULTIPART,
            b"preamble ", None, 400, "malformed-upload"),
    Hostile("multipart whose part headers never end, chunked", "POST", "/v1/jobs", MULTIPART,
            _multipart_head('Content-Disposition: form-data; name="slide"; x="'), None, 400,
            "malformed-upload"),
    Hostile("multipart whose mpp never ends, chunked", "POST", "/v1/jobs", MULTIPART,
            _multipart_head('Content-Disposition: form-data; name="mpp"\r\n\r\n'), None, 400,
            "malformed-upload"),
    Hostile("multipart whose slide never ends, chunked", "POST", "/v1/jobs", MULTIPART,
            _multipart_head('Content-Disposition: form-data; name="slide"; filename="s.svs"\r\n\r\n'),
            None, 413, "upload-too-large"),
    Hostile("400 MB multipart, length announced", "POST", "/v1/jobs", MULTIPART,
            _multipart_head('Content-Disposition: form-data; name="slide"; filename="s.svs"\r\n\r\n'),
            HOSTILE_BYTES, 413, "upload-too-large"),
]  # fmt: skip


def _pieces(hostile: Hostile) -> Iterator[bytes]:
    """The body's bytes on the wire, chunk-framed when no length is announced."""
    sent = 0
    first = True
    while hostile.total is None or sent < hostile.total:
        data = hostile.head if first else PIECE
        if hostile.total is not None:
            data = data[: hostile.total - sent]
        first = False
        sent += len(data)
        yield data if hostile.total is not None else b"%x\r\n%s\r\n" % (len(data), data)
        if hostile.total is None and sent >= HOSTILE_BYTES:
            yield b"0\r\n\r\n"  # the end of the chunks: a server that buffered all now answers
            return


def send(port: int, hostile: Hostile, key: str) -> tuple[int, dict[str, object]]:
    """Send `hostile` until the API answers (or the body is out); its status and problem."""
    headers = {**hostile.headers, "Host": "127.0.0.1", "Authorization": f"Bearer {key}"}
    if hostile.total is None:
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(hostile.total)
    request = f"{hostile.method} {hostile.path} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(request.encode() + b"\r\n")
        answered = False  # once the API answers, the rest of the body is never sent
        for data in _pieces(hostile):
            view = memoryview(data)
            while view and not answered:
                readable, _, _ = select.select([sock], [sock], [], 120)
                answered = bool(readable)
                if not answered:
                    try:
                        view = view[sock.send(view) :]
                    except (BrokenPipeError, ConnectionResetError):
                        answered = True
            if answered:
                break
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = json.loads(response.read() or b"{}")
        return response.status, body


def _worker_pid(master: int) -> int:
    """The one gunicorn worker process forked by the master."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                return int(entry.name)
        time.sleep(0.2)
    pytest.fail("gunicorn started no worker process")


def peak_rss(pid: int) -> int:
    """VmHWM of `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_hostile_bodies_are_refused_within_the_memory_budget(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'data' / 'idcscan.sqlite3'}"
    env = {
        "IDCSCAN_DATA_DIR": str(tmp_path / "data"),
        "IDCSCAN_DATABASE_URL": database,
        "IDCSCAN_MAX_UPLOAD_BYTES": str(32 * 1024**2),
    }
    upgrade(database)
    key = idcscan_cli(env, "clients", "add", "ops", "--admin").strip().splitlines()[-1]
    port = free_port()
    log = tmp_path / "api.log"
    with idcscan_process(["api", "--port", str(port), "--workers", "1"], env, log) as api:
        wait_until_up(f"http://127.0.0.1:{port}", log)
        worker = _worker_pid(api.pid)
        baseline = peak_rss(worker)
        peaks = {}
        for hostile in HOSTILE:
            status, problem = send(port, hostile, key)
            peaks[hostile.name] = peak_rss(worker)
            assert peaks[hostile.name] < BUDGET_BYTES, (hostile.name, peaks)
            assert (status, problem.get("type")) == (
                hostile.status,
                f"urn:idcscan:problem:{hostile.problem}",
            ), (hostile.name, problem)
            # Still answering, from the same worker (none was killed and replaced).
            auth = {"Authorization": f"Bearer {key}"}
            listed = requests.get(f"http://127.0.0.1:{port}/v1/jobs", headers=auth, timeout=10)
            assert listed.status_code == 200
            assert _worker_pid(api.pid) == worker
        # The bad key is refused before any body is read, whatever its size.
        status, problem = send(port, HOSTILE[1], "idc_00000000_" + "x" * 43)
        assert status == 401
        assert peak_rss(worker) < BUDGET_BYTES
    stored = [p for p in (tmp_path / "data" / "storage").rglob("*") if p.is_file()]
    assert stored == []
    engine = make_engine(database)
    try:
        with engine.connect() as connection:
            assert connection.scalar(sa.select(sa.func.count()).select_from(Job)) == 0
            assert connection.scalar(sa.select(sa.func.count()).select_from(Client)) == 1
    finally:
        engine.dispose()
    print(f"baseline {baseline / 2**20:.0f} MiB; peaks", {k: v // 2**20 for k, v in peaks.items()})
