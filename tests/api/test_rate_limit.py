"""Rate limits: per address before authentication, per client after, on storage every API process
shares (Redis, as in production): 429 with Retry-After."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from idcscan.core.migrate import upgrade
from idcscan.core.settings import Settings
from tests.processes import free_port, idcscan_cli, idcscan_process, wait_until_up

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_each_client_has_its_own_limit(serve, service_settings: Settings, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = service_settings.model_copy(
        update={"rate_limit": "3/minute", "rate_limit_storage_url": redis_url}
    )
    # Two API processes behind one Redis share the count, as gunicorn workers do.
    first, second = serve(settings), serve(settings)
    key = first.add_client("busy")
    other = first.add_client("quiet")
    statuses = [s.get("/v1/jobs", key).status_code for s in (first, second, first)]
    assert statuses == [200, 200, 200]
    limited = second.get("/v1/jobs", key)
    assert limited.status_code == 429
    assert limited.headers["Content-Type"] == "application/problem+json"
    assert limited.json()["type"] == "urn:idcscan:problem:rate-limited"
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    assert first.get("/v1/jobs", other).status_code == 200
    # Operations routes are never limited.
    assert all(first.get("/healthz").status_code == 200 for _ in range(5))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_flood_of_bad_keys_is_limited_by_address(serve, service_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """Counted before authentication: guessing keys costs the guesser its address's budget."""
    settings = service_settings.model_copy(update={"rate_limit_per_address": "5/minute"})
    service = serve(settings)
    key = service.add_client()
    guesses = [service.get("/v1/jobs", f"idc_{n:08x}_{'x' * 43}") for n in range(5)]
    assert [r.status_code for r in guesses] == [401] * 5
    limited = service.get("/v1/jobs", "idc_00000009_" + "x" * 43)
    assert limited.status_code == 429
    assert limited.json()["type"] == "urn:idcscan:problem:rate-limited"
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    # The address is spent, whoever's key it carries; operations routes stay open.
    assert service.get("/v1/jobs", key).status_code == 429
    assert service.post("/v1/jobs", None, data=b"x" * 10).status_code == 429
    assert service.get("/healthz").status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("trusted_proxies", [0, 1])
def test_the_address_is_the_proxys_only_when_it_is_trusted(
    serve, service_settings: Settings, trusted_proxies: int
) -> None:  # type: ignore[no-untyped-def]
    settings = service_settings.model_copy(
        update={"rate_limit_per_address": "2/minute", "trusted_proxies": trusted_proxies}
    )
    service = serve(settings)
    statuses = [
        service.get("/v1/jobs", headers={"X-Forwarded-For": f"192.0.2.{n}"}).status_code
        for n in range(4)
    ]
    # Behind a trusted proxy each client address has its own budget; otherwise a forged
    # X-Forwarded-For header changes nothing.
    assert statuses == ([401] * 4 if trusted_proxies else [401, 401, 429, 429])


def _api_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    database = f"sqlite:///{tmp_path / 'data' / 'idcscan.sqlite3'}"
    upgrade(database)
    return {"IDCSCAN_DATA_DIR": str(tmp_path / "data"), "IDCSCAN_DATABASE_URL": database, **extra}


def test_several_processes_counting_in_memory_are_refused(tmp_path: Path) -> None:
    """Embedded (no Redis anywhere): N processes would each allow the whole limit."""
    env = _api_env(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "idcscan.cli", "api", "--port", str(free_port()), "--workers", "3"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "idcscan: error: 3 API processes would each count rate limits apart (memory://): set "
        "IDCSCAN_RATE_LIMIT_STORAGE_URL to a redis:// URL, or run --workers 1"
    ]


def test_several_processes_share_the_brokers_redis(tmp_path: Path, redis_url: str) -> None:
    """memory:// with a Redis broker: the limit holds across gunicorn workers, not N times over."""
    env = _api_env(
        tmp_path,
        IDCSCAN_BROKER_URL=redis_url,
        IDCSCAN_RATE_LIMIT="4/minute",
        IDCSCAN_RATE_LIMIT_STORAGE_URL="memory://",
    )
    key = idcscan_cli(env, "clients", "add", "busy").strip().splitlines()[-1]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "api.log"
    with idcscan_process(["api", "--port", str(port), "--workers", "3"], env, log):
        wait_until_up(url, log)
        statuses = []
        for _ in range(12):  # a fresh connection each: gunicorn spreads them over its workers
            with requests.Session() as session:
                reply = session.get(
                    url + "/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10
                )
                statuses.append(reply.status_code)
    assert statuses == [200] * 4 + [429] * 8
    assert "counting rate limits in the broker's Redis instead" in log.read_text()
