"""Run `idcscan` subcommands as child processes: the demo, the benchmarks and the tests start the
service's processes the way an operator (or docker compose) does, through this one helper."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def idcscan_process(
    args: list[str], env: Mapping[str, str], log: Path, stop_timeout: float = 30
) -> Iterator[subprocess.Popen[bytes]]:
    """`idcscan ARGS` in its own process group, output appended to `log`.

    On exit it gets SIGTERM (a worker finishes its batch and releases its job), then SIGKILL for
    the whole group after `stop_timeout` seconds.
    """
    with open(log, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "idcscan.cli", *args],
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(5)
