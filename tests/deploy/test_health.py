"""`idcscan health`, the containers' health checks, against real processes: the API under
gunicorn, a Celery worker on a real Redis, the reconciler. Each check passes while its process
works and fails once the process is down, wedged (SIGSTOP: alive, but its loop no longer
turns) or cut off from what it needs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import free_port, idcscan_cli, idcscan_process, wait_for_line, wait_until_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def health(env: dict[str, str], *args: str) -> tuple[int, str]:
    """`idcscan health ARGS`: its exit status and its one line."""
    done = subprocess.run(
        [sys.executable, "-m", "idcscan.cli", "health", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


def until_healthy(env: dict[str, str], *args: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (result := health(env, *args))[0] != 0:
        if time.monotonic() > deadline:
            pytest.fail(f"idcscan health {' '.join(args)} never passed: {result[1]}")
        time.sleep(0.5)


def test_a_heartbeat_that_cannot_be_written_is_no_crash(tmp_path: Path) -> None:
    from idcscan.core.heartbeat import age_s, beat

    nowhere = tmp_path / "no-such-folder" / "worker.heartbeat"
    beat(nowhere)  # logged; the health check then reports it
    assert age_s(nowhere) is None
    beat(tmp_path / "worker.heartbeat")
    assert age_s(tmp_path / "worker.heartbeat") is not None


def test_api_health_is_its_readiness(redis_url: str, tmp_path: Path) -> None:
    env = {
        "IDCSCAN_DATA_DIR": str(tmp_path / "data"),
        "IDCSCAN_BROKER_URL": redis_url,
        "IDCSCAN_RATE_LIMIT_STORAGE_URL": redis_url,
    }
    idcscan_cli(env, "db", "upgrade")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "api.log"
    with idcscan_process(["api", "--port", str(port), "--workers", "1"], env, log):
        wait_until_up(url, log)
        assert health(env, "api", "--url", url) == (0, f"healthy: {url}/readyz answered 200")
    code, line = health(env, "api", "--url", url)
    assert code == 1 and "did not answer" in line, line

    # Up, but its broker is not: /healthz answers, readiness (and so the health check) does not.
    cut_off = {**env, "IDCSCAN_BROKER_URL": "redis://127.0.0.1:1/0"}
    cut_off["IDCSCAN_RATE_LIMIT_STORAGE_URL"] = "memory://"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with idcscan_process(["api", "--port", str(port), "--workers", "1"], cut_off, log):
        wait_until_up(url, log)
        code, line = health(cut_off, "api", "--url", url)
    assert (
        code == 1 and "answered 503" in line and '"broker":"unavailable"' in line.replace(" ", "")
    ), line


def test_worker_health_follows_its_loop(redis_url: str, tmp_path: Path) -> None:
    env = {
        "IDCSCAN_DATA_DIR": str(tmp_path / "data"),
        "IDCSCAN_BROKER_URL": redis_url,
        "IDCSCAN_INFERENCE_THREADS": "1",
    }
    idcscan_cli(env, "db", "upgrade")
    beat = tmp_path / "worker.heartbeat"
    check = ("worker", "--heartbeat", str(beat), "--max-age-s", "11")
    assert health(env, *check) == (1, f"unhealthy: no worker heartbeat at {beat}")
    log = tmp_path / "worker.log"
    with idcscan_process(["worker", "--heartbeat", str(beat)], env, log) as worker:
        wait_for_line(log, "ready.")
        until_healthy(env, *check)
        first = beat.stat().st_mtime
        time.sleep(11)  # one beat period (10 s) and a bit
        assert health(env, *check)[0] == 0
        assert beat.stat().st_mtime > first, "the worker did not renew its heartbeat"

        # Wedged: the process is there, its loop does not turn.
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            time.sleep(12)
            code, line = health(env, *check)
            assert code == 1 and "s old (at most 11)" in line, line
        finally:
            os.kill(worker.pid, signal.SIGCONT)
    # Stopped: it takes its heartbeat with it.
    assert health(env, *check)[0] == 1


def test_scheduler_health_follows_its_rounds(redis_url: str, tmp_path: Path) -> None:
    env = {
        "IDCSCAN_DATA_DIR": str(tmp_path / "data"),
        "IDCSCAN_BROKER_URL": redis_url,
        "IDCSCAN_RECONCILE_INTERVAL_S": "1",
    }
    idcscan_cli(env, "db", "upgrade")
    beat = tmp_path / "scheduler.heartbeat"
    check = ("scheduler", "--heartbeat", str(beat), "--max-age-s", "3")
    log = tmp_path / "scheduler.log"
    with idcscan_process(["scheduler", "--heartbeat", str(beat)], env, log) as scheduler:
        until_healthy(env, *check)
        time.sleep(4)  # longer than the allowed age: only rounds since then keep it fresh
        assert health(env, *check)[0] == 0, log.read_text()[-2000:]
        os.kill(scheduler.pid, signal.SIGSTOP)
        try:
            time.sleep(4)
            code, line = health(env, *check)
            assert code == 1 and "scheduler's last heartbeat" in line, line
        finally:
            os.kill(scheduler.pid, signal.SIGCONT)
