"""Redis killed (SIGKILL) while a job runs, and started again from its append-only file: the
running job carries on and succeeds on its first attempt; the connection loss costs it nothing.
Through a real `idcscan worker` on PostgreSQL and the test's own Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from idcscan.broker import publish_job
from idcscan.core.db import Job, JobStatus, make_engine, make_sessionmaker
from idcscan.core.migrate import upgrade
from idcscan.core.settings import Settings, get_settings
from tests.faults.checks import assert_consistent
from tests.faults.servers import RedisServer
from tests.processes import idcscan_process, wait_for_line

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]


def test_redis_killed_mid_job_costs_no_attempt(
    postgres_url: str,
    own_redis: RedisServer,
    tmp_path: Path,
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
    long_slide: Path,
) -> None:
    data = tmp_path / "data"
    env = {
        "IDCSCAN_DATA_DIR": str(data),
        "IDCSCAN_DATABASE_URL": postgres_url,
        "IDCSCAN_BROKER_URL": own_redis.url,
        "IDCSCAN_BATCH_SIZE": "8",
        "IDCSCAN_LEASE_S": "5",
        "IDCSCAN_INFERENCE_THREADS": "1",
        "IDCSCAN_LOG_LEVEL": "INFO",
    }
    settings = get_settings(data_dir=data, database_url=postgres_url, broker_url=own_redis.url)
    upgrade(postgres_url)
    job_id = make_job(settings)(str(long_slide))
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    log = tmp_path / "worker.log"

    def job() -> Job:
        with sessions() as session:
            found = session.get(Job, job_id)
            assert found is not None
            return found

    try:
        with idcscan_process(["worker", "--concurrency=1", "--beat"], env, log):
            wait_for_line(log, "ready.")
            publish_job(job_id, settings)
            deadline = time.monotonic() + 60
            while not job().tiles_done and time.monotonic() < deadline:
                time.sleep(0.05)
            assert job().status == JobStatus.RUNNING, log.read_text()[-3000:]
            own_redis.kill()
            time.sleep(1.0)
            own_redis.start()  # the same port, from its append-only file
            deadline = time.monotonic() + 120
            while not JobStatus(job().status).finished and time.monotonic() < deadline:
                time.sleep(0.25)
        done = job()
        assert done.status == JobStatus.SUCCEEDED, (done.error_kind, log.read_text()[-3000:])
        assert done.attempts == 1
        assert_consistent(settings, sessions, [job_id], log)
    finally:
        engine.dispose()
