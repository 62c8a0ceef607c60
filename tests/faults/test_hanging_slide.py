"""A slide whose reader hangs (a FIFO in storage: opening it blocks in the kernel, as a stalled
network share or a stuck decoder would) ends as `timeout` at its own deadline, not as
`worker_lost` after the task's hard limit, and the worker's only slot is free again for the next
job. Through a real `idcscan worker` (Celery prefork) on PostgreSQL and the test's own Redis."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from idcscan.broker import publish_job
from idcscan.core.db import ErrorKind, Job, JobStatus, make_engine, make_sessionmaker
from idcscan.core.migrate import upgrade
from idcscan.core.settings import Settings, get_settings
from idcscan.core.storage import Storage
from tests.conftest import SAMPLE_PATIENTS
from tests.faults.checks import assert_consistent
from tests.faults.servers import RedisServer
from tests.processes import idcscan_process, wait_for_line

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

DEADLINE_S = 3


def test_hanging_reader_ends_as_timeout_and_frees_the_slot(
    postgres_url: str,
    own_redis: RedisServer,
    tmp_path: Path,
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
) -> None:
    data = tmp_path / "data"
    env = {
        "IDCSCAN_DATA_DIR": str(data),
        "IDCSCAN_DATABASE_URL": postgres_url,
        "IDCSCAN_BROKER_URL": own_redis.url,
        "IDCSCAN_SLIDE_DEADLINE_MIN_S": str(DEADLINE_S),
        "IDCSCAN_INFERENCE_THREADS": "1",
        "IDCSCAN_LOG_LEVEL": "INFO",
    }
    settings = get_settings(
        data_dir=data,
        database_url=postgres_url,
        broker_url=own_redis.url,
        slide_deadline_min_s=DEADLINE_S,
    )
    upgrade(postgres_url)
    storage = Storage(settings.storage)
    fifo = Path(storage.uri(f"slides/test/{uuid.uuid4().hex}/hangs.svs"))
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)  # no writer ever: open() blocks for good
    jobs = make_job(settings)
    hanging = jobs(str(fifo), as_is={"slide"})
    after = jobs(str(SAMPLE_PATIENTS / "8916"))
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    log = tmp_path / "worker.log"
    try:
        with idcscan_process(["worker", "--concurrency=1"], env, log):
            wait_for_line(log, "ready.")
            started = time.monotonic()
            publish_job(hanging, settings)
            publish_job(after, settings)
            deadline = started + 60
            while time.monotonic() < deadline:
                with sessions() as session:
                    statuses = {
                        j.id: JobStatus(j.status)
                        for j in session.query(Job).filter(Job.id.in_([hanging, after]))
                    }
                if all(s.finished for s in statuses.values()):
                    break
                time.sleep(0.25)
            elapsed = time.monotonic() - started
            assert all(s.finished for s in statuses.values()), log.read_text()[-3000:]
        with sessions() as session:
            stuck = session.get(Job, hanging)
            assert stuck is not None
            assert stuck.status == JobStatus.FAILED, stuck.status
            assert stuck.error_kind == ErrorKind.TIMEOUT and stuck.attempts == 1
        assert statuses[after] == JobStatus.SUCCEEDED
        # The slot came back within the deadline, the grace and a new pool process, not an hour.
        assert elapsed < 40
        assert_consistent(settings, sessions, [hanging, after], log)
    finally:
        engine.dispose()
