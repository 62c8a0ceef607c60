"""Redis loses every queued message (FLUSHALL, as a restart without its data would): the
reconciler finds the queue empty and publishes the jobs again after a lease, not after the
visibility window (an hour and more). Through a real `idcscan worker --beat` on PostgreSQL and
the test's own Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from sqlalchemy import update

from idcscan.broker import publish_job
from idcscan.core.db import Job, JobStatus, make_engine, make_sessionmaker, transaction, utcnow
from idcscan.core.migrate import upgrade
from idcscan.core.settings import Settings, get_settings
from tests.faults.checks import assert_consistent
from tests.faults.servers import RedisServer
from tests.processes import idcscan_process, wait_for_line

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]


def test_flushed_queue_is_published_again_after_a_lease(
    postgres_url: str,
    own_redis: RedisServer,
    tmp_path: Path,
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
    patient_zip: Path,
) -> None:
    data = tmp_path / "data"
    env = {
        "IDCSCAN_DATA_DIR": str(data),
        "IDCSCAN_DATABASE_URL": postgres_url,
        "IDCSCAN_BROKER_URL": own_redis.url,
        "IDCSCAN_LEASE_S": "5",
        "IDCSCAN_RECONCILE_INTERVAL_S": "1",
        "IDCSCAN_INFERENCE_THREADS": "1",
        "IDCSCAN_LOG_LEVEL": "INFO",
    }
    settings = get_settings(
        data_dir=data, database_url=postgres_url, broker_url=own_redis.url, lease_s=5
    )
    upgrade(postgres_url)
    jobs = make_job(settings)
    accepted = [jobs(str(patient_zip)) for _ in range(5)]
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    for job_id in accepted:  # committed and published, as the API does
        publish_job(job_id, settings)
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id.in_(accepted)).values(published_at=utcnow()))
    with redis.Redis.from_url(own_redis.url) as client:
        client.flushall()
    log = tmp_path / "worker.log"
    try:
        with idcscan_process(["worker", "--concurrency=1", "--beat"], env, log):
            wait_for_line(log, "ready.")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with sessions() as session:
                    statuses = {
                        JobStatus(s)
                        for s in session.scalars(
                            Job.__table__.select()
                            .with_only_columns(Job.status)
                            .where(Job.id.in_(accepted))
                        )
                    }
                if all(s.finished for s in statuses):
                    break
                time.sleep(0.5)
        assert statuses == {JobStatus.SUCCEEDED}, (statuses, log.read_text()[-3000:])
        assert_consistent(settings, sessions, accepted, log)
    finally:
        engine.dispose()
