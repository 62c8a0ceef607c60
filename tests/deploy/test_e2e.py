"""The compose stack end to end (deploy/e2e.sh): images built from the Dockerfile, the unmodified
docker-compose.yml run by the real `docker compose`, a slide over HTTPS through the proxy, two
workers, a worker SIGKILLed mid-job, redis and postgres restarted, down and up again on the same
volumes, `down -v`.

Runs only when selected (`pytest -m compose`: minutes, most of them building images the first
time). Where the machine keeps a container engine script beside the repository
(../shared/tools/container-engine.sh: podman serving the Docker API, the compose binary, local
base images), the test starts it and runs the scenario through it; elsewhere it uses plain Docker
when `docker compose` answers. Neither: skipped with the reason. Under CI=true an engine that does
not start, or a stack that does not come up, fails."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time

import pytest

from tests.conftest import ROOT, service_missing

pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(900)]

ENGINE_SCRIPT = ROOT.parent / "shared" / "tools" / "container-engine.sh"
BUDGET_S = 8 * 60


def engine_environment() -> dict[str, str]:
    """What the engine script's `start` exports (DOCKER_HOST, COMPOSE, BUILD, ...)."""
    started = subprocess.run(
        ["bash", str(ENGINE_SCRIPT), "start"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if started.returncode != 0:
        service_missing(f"{ENGINE_SCRIPT} start failed: {started.stderr.strip()[-500:]}")
    exported = {}
    for line in started.stdout.splitlines():
        words = shlex.split(line)
        if words[:1] == ["export"]:
            exported.update(word.split("=", 1) for word in words[1:])
    return exported


def plain_docker() -> bool:
    if shutil.which("docker") is None:
        return False
    for args in (["docker", "compose", "version"], ["docker", "info"]):
        if subprocess.run(args, capture_output=True, timeout=30, check=False).returncode != 0:
            return False
    return True


def test_the_stack_end_to_end() -> None:
    if ENGINE_SCRIPT.exists():
        env = {**os.environ, **engine_environment()}
    elif plain_docker():
        env = dict(os.environ)
    else:
        service_missing(f"no container engine: neither {ENGINE_SCRIPT} nor `docker compose`")
    for tool in ("curl", "jq", "openssl"):
        if shutil.which(tool) is None:
            service_missing(f"deploy/e2e.sh needs {tool}")

    started = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "deploy" / "e2e.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=BUDGET_S + 300,
        check=False,
    )
    elapsed = time.monotonic() - started
    # The script's own progress lines first (which step failed), then the end of its output.
    steps = "\n".join(line for line in done.stdout.splitlines() if line.startswith("[e2e"))
    output = steps + "\n...\n" + (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, output
    assert "down -v: passed" in done.stdout, output
    print(f"compose end to end: {elapsed:.0f} s\n{done.stdout}")
    assert elapsed < BUDGET_S, f"{elapsed:.0f} s, over the {BUDGET_S} s budget:\n{output}"
