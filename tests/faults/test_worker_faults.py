"""Faults around a running job, through a real `idcscan worker` (Celery prefork) on the test's
own PostgreSQL cluster and Redis: the database stopped mid-job, and the worker told to stop
(SIGTERM, as `docker compose stop` does). Each ends with the campaign's checker."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from idcscan.broker import publish_job
from idcscan.core.db import Job, JobStatus, make_engine, make_sessionmaker
from idcscan.core.migrate import upgrade
from idcscan.core.settings import Settings, get_settings
from tests.faults.checks import assert_consistent
from tests.faults.servers import PostgresCluster, RedisServer
from tests.processes import idcscan_process, wait_for_line

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]


@contextmanager
def worker_on_a_job(
    url: str,
    redis_url: str,
    tmp_path: Path,
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
    slide: Path,
) -> Iterator[tuple[Settings, Callable[[], Job], Path, uuid.UUID, subprocess.Popen[bytes]]]:
    """A worker with a job of `slide` that has scored its first batches."""
    env = {
        "IDCSCAN_DATA_DIR": str(tmp_path / "data"),
        "IDCSCAN_DATABASE_URL": url,
        "IDCSCAN_BROKER_URL": redis_url,
        "IDCSCAN_BATCH_SIZE": "8",
        "IDCSCAN_LEASE_S": "10",
        "IDCSCAN_INFERENCE_THREADS": "1",
        "IDCSCAN_LOG_LEVEL": "INFO",
    }
    settings = get_settings(
        data_dir=tmp_path / "data", database_url=url, broker_url=redis_url, lease_s=10
    )
    upgrade(url)
    job_id = make_job(settings)(str(slide))
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    log = tmp_path / "worker.log"

    def job() -> Job:
        with sessions() as session:
            found = session.get(Job, job_id)
            assert found is not None
            return found

    try:
        with idcscan_process(["worker", "--concurrency=1"], env, log) as worker:
            wait_for_line(log, "ready.")
            publish_job(job_id, settings)
            deadline = time.monotonic() + 60
            while not job().tiles_done and time.monotonic() < deadline:
                time.sleep(0.05)
            assert job().status == JobStatus.RUNNING, log.read_text()[-3000:]
            yield settings, job, log, job_id, worker
        assert_consistent(settings, sessions, [job_id], log)
    finally:
        engine.dispose()


def _until_finished(job: Callable[[], Job], timeout: float) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            current = job()
        except Exception:  # the database is still coming back
            time.sleep(0.25)
            continue
        if JobStatus(current.status).finished:
            return current
        time.sleep(0.25)
    return job()


def test_postgresql_stopped_mid_job_costs_nothing(
    own_postgres: tuple[PostgresCluster, str],
    own_redis: RedisServer,
    tmp_path: Path,
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
    long_slide: Path,
) -> None:
    cluster, url = own_postgres
    with worker_on_a_job(url, own_redis.url, tmp_path, make_job, long_slide) as (
        _settings,
        job,
        log,
        _job_id,
        _worker,
    ):
        cluster.stop("fast")  # every session ended, progress writes fail for a while
        time.sleep(2)
        cluster.start()
        done = _until_finished(job, 90)
        assert done.status == JobStatus.SUCCEEDED, (done.error_kind, log.read_text()[-3000:])
        assert done.attempts == 1


def test_sigterm_mid_job_finishes_the_job_before_the_worker_stops(
    postgres_url: str,
    own_redis: RedisServer,
    tmp_path: Path,
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
    long_slide: Path,
) -> None:
    with worker_on_a_job(postgres_url, own_redis.url, tmp_path, make_job, long_slide) as (
        _settings,
        job,
        log,
        _job_id,
        worker,
    ):
        worker.send_signal(signal.SIGTERM)
        worker.wait(90)
        done = job()
        assert done.status == JobStatus.SUCCEEDED, (done.error_kind, log.read_text()[-3000:])
        assert done.attempts == 1
