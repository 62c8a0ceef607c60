"""Run idcscan's own commands as real processes, the way an operator (or docker compose) does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from idcscan.processes import free_port
from idcscan.processes import idcscan_process as run_in_background

__all__ = ["free_port", "idcscan_cli", "idcscan_process", "wait_for_line", "wait_until_up"]


@contextmanager
def idcscan_process(
    args: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`idcscan ARGS` in the background with the test's environment on top of this process's."""
    with run_in_background(args, {**os.environ, **env}, log, stop_timeout=20) as child:
        yield child


def idcscan_cli(env: dict[str, str], *args: str) -> str:
    """`idcscan ARGS` to completion; its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "idcscan.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"idcscan {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def wait_until_up(url: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or workers still booting
            time.sleep(0.2)
    pytest.fail(f"the API did not come up; log:\n{log.read_text()[-3000:]}")


def wait_for_line(log: Path, text: str, timeout: float = 60) -> None:
    """Until `text` appears in `log` (e.g. Celery's 'ready.')."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    pytest.fail(f"{text!r} never appeared in {log.name}:\n{log.read_text()[-3000:]}")
