"""PostgreSQL down under a running API: every `/v1` route answers 503 problem+json with
`Retry-After`, one warning line per request (no traceback), and the API recovers by itself once
the database is back. Redis down at a submit, or frozen (SIGSTOP: its port open, nothing
answering): 202 or 503, never a request that hangs."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from idcscan.core.migrate import upgrade
from idcscan.core.settings import Settings, get_settings
from tests.api.conftest import Service
from tests.faults.servers import PostgresCluster, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _v1_routes(service: Service) -> list[tuple[str, str]]:
    """Every (method, path) the app serves under /v1, its parameters filled in."""
    from idcscan.api.app import create_app

    app = create_app(service.settings)
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1"):
            continue
        path = re.sub(r"<[^>]*:job_id>", str(uuid.uuid4()), rule.rule)
        path = re.sub(r"<[^>]*>", "1", path)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append((method, path))
    app.extensions["idcscan.engine"].dispose()
    return routes


def test_database_down_answers_503_on_every_route(
    own_postgres: tuple[PostgresCluster, str],
    own_redis: RedisServer,
    serve: Callable[[Settings], Service],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster, url = own_postgres
    upgrade(url)
    service = serve(
        get_settings(data_dir=tmp_path / "data", database_url=url, broker_url=own_redis.url)
    )
    key = service.add_client()
    assert service.get("/v1/jobs", key).status_code == 200
    routes = _v1_routes(service)
    assert len(routes) >= 10

    cluster.stop("fast")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for method, path in routes:
            response = service.request(method, path, key)
            assert response.status_code == 503, (method, path, response.text)
            assert response.headers["Content-Type"] == "application/problem+json"
            assert int(response.headers["Retry-After"]) > 0
            body = response.json()
            assert body["type"] == "urn:idcscan:problem:database-unavailable", (method, path)
            assert body["detail"] == "The database is unavailable; retry later."
            assert "psycopg" not in response.text and str(cluster.port) not in response.text
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert tracebacks == []
    warnings = [r for r in caplog.records if r.getMessage() == "database unavailable"]
    assert len(warnings) == len(routes)

    cluster.start()
    assert service.get("/v1/jobs", key).status_code == 200
    assert service.get("/healthz").status_code == 200


def test_broker_down_at_submit_is_published_by_the_next_reconciler_round(
    postgres_url: str,
    own_redis: RedisServer,
    serve: Callable[[Settings], Service],
    tmp_path: Path,
) -> None:
    """The job is committed, its publish fails: 202 all the same, the failed publish recorded,
    and the reconciler publishes it once the broker is back (not a visibility window later)."""
    from idcscan.broker import publish_job
    from idcscan.core.db import Job
    from idcscan.worker.reconciler import reconcile
    from tests.api.conftest import plain_tiff

    upgrade(postgres_url)
    settings = get_settings(
        data_dir=tmp_path / "data", database_url=postgres_url, broker_url=own_redis.url
    )
    service = serve(settings)
    key = service.add_client()
    own_redis.kill()
    response = service.submit(key, plain_tiff(tmp_path / "s.tiff", mpp=0.5), name="s.tiff")
    assert response.status_code == 202, response.text
    job_id = uuid.UUID(response.json()["id"])
    with service.db() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.published_at is None

    own_redis.start()
    assert service.published() == []
    done = reconcile(settings, service.db, lambda j: publish_job(j, settings))
    assert done.republished == [job_id]
    assert len(service.published()) == 1
    # Published now: the next round leaves it alone while it waits in line.
    assert reconcile(settings, service.db, lambda j: publish_job(j, settings)).republished == []


def test_a_frozen_redis_answers_503_instead_of_hanging(
    postgres_url: str,
    own_redis: RedisServer,
    serve: Callable[[Settings], Service],
    tmp_path: Path,
) -> None:
    """Redis stopped mid-flight (SIGSTOP: its port still accepts, nothing answers), as a host
    under memory pressure or a paused container leaves it. The rate limiter counts every request
    in Redis, through redis-py's client and its own 5 s socket timeout: each request answers 503
    broker-unavailable instead of waiting for ever, and the API recovers by itself."""
    upgrade(postgres_url)
    settings = get_settings(
        data_dir=tmp_path / "data",
        database_url=postgres_url,
        broker_url=own_redis.url,
        rate_limit_storage_url=own_redis.url,
    )
    service = serve(settings)
    key = service.add_client()
    assert service.get("/v1/jobs", key).status_code == 200

    own_redis.freeze()
    try:
        # Service.get gives up after 30 s: a hang fails the test, it does not stall it.
        response = service.get("/v1/jobs", key)
        assert response.status_code == 503, response.text
        assert response.json()["type"] == "urn:idcscan:problem:broker-unavailable"
        assert int(response.headers["Retry-After"]) > 0
    finally:
        own_redis.thaw()
    assert service.get("/v1/jobs", key).status_code == 200


def test_a_frozen_redis_broker_neither_hangs_a_submit_nor_readiness(
    postgres_url: str,
    own_redis: RedisServer,
    serve: Callable[[Settings], Service],
    tmp_path: Path,
) -> None:
    """The broker frozen (rate limits counted in memory): a submit commits its job and answers
    202, its publish left to the reconciler as when Redis is down, and `/readyz` says 503 within
    the container healthcheck's 5 s, instead of both waiting on Redis for ever."""
    from idcscan.core.db import Job
    from tests.api.conftest import plain_tiff

    upgrade(postgres_url)
    service = serve(
        get_settings(
            data_dir=tmp_path / "data", database_url=postgres_url, broker_url=own_redis.url
        )
    )
    key = service.add_client()
    assert service.get("/readyz").status_code == 200

    own_redis.freeze()
    try:
        response = service.submit(key, plain_tiff(tmp_path / "s.tiff", mpp=0.5), name="s.tiff")
        assert response.status_code == 202, response.text
        with service.db() as session:
            job = session.get(Job, uuid.UUID(response.json()["id"]))
            assert job is not None and job.published_at is None
        started = time.monotonic()
        assert service.get("/readyz").status_code == 503
        assert time.monotonic() - started < 5
    finally:
        own_redis.thaw()
    assert service.get("/readyz").status_code == 200
