"""A 50-job backlog through the API, one worker and its reconciler: every job ends once, and the
reconciler does not re-publish jobs that are only waiting in line (duplicate deliveries per job
under 0.1, the issue's target)."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from idcscan.core.db import Job, JobStatus
from idcscan.core.settings import Settings, get_settings
from tests.api.conftest import Service
from tests.conftest import SAMPLE_PATIENTS
from tests.faults.checks import assert_consistent, deliveries
from tests.faults.servers import RedisServer
from tests.processes import idcscan_process, wait_for_line

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

BACKLOG = 50


def test_backlog_is_delivered_about_once_per_job(
    postgres_url: str,
    own_redis: RedisServer,
    serve: Callable[[Settings], Service],
    activate_tiny_model: Callable[[Settings], None],
    tmp_path: Path,
) -> None:
    from idcscan.core.migrate import upgrade

    upgrade(postgres_url)
    env = {
        "IDCSCAN_DATA_DIR": str(tmp_path / "data"),
        "IDCSCAN_DATABASE_URL": postgres_url,
        "IDCSCAN_BROKER_URL": own_redis.url,
        # A short lease and a reconciler every second: the backlog waits many leases in line.
        "IDCSCAN_LEASE_S": "5",
        "IDCSCAN_RECONCILE_INTERVAL_S": "1",
        "IDCSCAN_INFERENCE_THREADS": "1",
        "IDCSCAN_LOG_LEVEL": "INFO",
    }
    settings = get_settings(
        data_dir=tmp_path / "data",
        database_url=postgres_url,
        broker_url=own_redis.url,
        lease_s=5,
        reconcile_interval_s=1,
    )
    activate_tiny_model(settings)
    service = serve(settings)
    key = service.add_client()
    archive = Path(shutil.make_archive(str(tmp_path / "8916"), "zip", SAMPLE_PATIENTS, "8916"))
    accepted = []
    for _ in range(BACKLOG):  # the whole backlog is in the queue before the worker starts
        response = service.submit(key, archive, name="8916.zip")
        assert response.status_code == 202, response.text
        accepted.append(uuid.UUID(response.json()["id"]))

    log = tmp_path / "worker.log"
    with idcscan_process(["worker", "--concurrency=1", "--beat"], env, log):
        wait_for_line(log, "ready.")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with service.db() as session:
                unfinished = session.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
                )
            if unfinished == 0:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the backlog did not drain; worker log:\n{log.read_text()[-3000:]}")

    assert_consistent(settings, service.db, accepted, log)
    with service.db() as session:
        statuses = set(session.scalars(select(Job.status).where(Job.id.in_(accepted))))
    assert statuses == {JobStatus.SUCCEEDED}
    duplicates = (deliveries(log) - BACKLOG) / BACKLOG
    print(f"duplicate deliveries per job in a {BACKLOG}-job backlog: {duplicates:.2f}")
    assert duplicates < 0.1
