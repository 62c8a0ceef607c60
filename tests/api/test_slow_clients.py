"""Slowloris against `idcscan api` run as documented (gunicorn, no proxy in front): connections
that send nothing, or half a request head and then wait, must not take the threads that serve
everyone else. `/healthz` still answers within a few seconds while they hang on."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import requests

from tests.processes import free_port, idcscan_process, wait_until_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKERS, THREADS = 1, 4
SLOW_CLIENTS = 4 * WORKERS * THREADS  # enough to hold every thread several times over


@contextmanager
def api(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {"IDCSCAN_DATA_DIR": str(tmp_path / "data")}
    log = tmp_path / "api.log"
    args = ["api", "--port", str(port), "--workers", str(WORKERS), "--threads", str(THREADS)]
    with idcscan_process(args, env, log):
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, log)
        yield url


HALF_A_HEAD = b"GET /healthz HTTP/1.1\r\nHost: idcscan\r\n"


def slow_clients(
    url: str, stack: ExitStack, sends: bytes, count: int = SLOW_CLIENTS, first: bytes = b""
) -> list[socket.socket]:
    """`count` connections that send `first` (a whole request, read to its end), then `sends`."""
    host, port = url.removeprefix("http://").split(":")
    clients = []
    for _ in range(count):
        client = stack.enter_context(socket.create_connection((host, int(port)), timeout=5))
        if first:
            client.sendall(first)
            reply = b""
            while b'"ok"' not in reply:  # the end of /healthz's answer
                reply += client.recv(4096)
        if sends:
            client.sendall(sends)
        clients.append(client)
    return clients


def answers_quickly(url: str) -> float:
    started = time.monotonic()
    response = requests.get(url + "/healthz", timeout=5)
    assert response.status_code == 200
    return time.monotonic() - started


@pytest.mark.parametrize(
    "sends",
    [
        pytest.param(b"", id="nothing"),
        pytest.param(HALF_A_HEAD, id="half-a-head"),
        pytest.param(b"G", id="one-byte"),
        pytest.param(b"keep-alive", id="a-request-then-half-a-head"),
    ],
)
def test_idle_and_half_sent_requests_do_not_block_the_api(tmp_path: Path, sends: bytes) -> None:
    with api(tmp_path) as url, ExitStack() as stack:
        if sends == b"keep-alive":  # a kept-alive connection's next request comes slowly
            slow_clients(url, stack, HALF_A_HEAD, first=HALF_A_HEAD + b"\r\n")
        else:
            slow_clients(url, stack, sends)
        time.sleep(0.5)  # let the server accept them all and hand them wherever it does
        for _ in range(3):
            assert answers_quickly(url) < 3


def test_a_head_that_never_completes_is_closed(tmp_path: Path) -> None:
    from idcscan.api.slowclients import HEAD_TIMEOUT_S

    with api(tmp_path) as url, ExitStack() as stack:
        [client] = slow_clients(url, stack, HALF_A_HEAD, count=1)
        client.settimeout(HEAD_TIMEOUT_S + 10)
        started = time.monotonic()
        assert client.recv(100) == b""  # closed by the server, nothing answered
        waited = time.monotonic() - started
        assert HEAD_TIMEOUT_S - 1 <= waited <= HEAD_TIMEOUT_S + 3, waited
        assert answers_quickly(url) < 3
