"""The embedded mode (SQLite, Celery's SQL transport): `idcscan worker` alone, as `idcscan demo`
starts it, without `--beat`. A job whose publish failed (committed, published_at null: the state
the API leaves when the broker's SQLite file stays locked past its retries under load) must
still be scored: the reconciler always runs beside the embedded worker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from idcscan.core.db import Job, JobStatus, make_engine, make_sessionmaker
from idcscan.core.migrate import upgrade
from idcscan.core.settings import Settings, get_settings
from tests.api.conftest import KOMBU_NOLOAD
from tests.faults.checks import assert_consistent
from tests.processes import idcscan_process, wait_for_line

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow, KOMBU_NOLOAD]


def test_embedded_worker_always_runs_the_reconciler(
    tmp_path: Path,
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
    patient_zip: Path,
) -> None:
    data = tmp_path / "data"
    env = {
        "IDCSCAN_DATA_DIR": str(data),
        "IDCSCAN_RECONCILE_INTERVAL_S": "1",
        "IDCSCAN_INFERENCE_THREADS": "1",
        "IDCSCAN_LOG_LEVEL": "INFO",
    }
    settings = get_settings(data_dir=data, reconcile_interval_s=1)
    assert settings.broker.startswith("sqla+sqlite")
    upgrade(settings.database)
    job_id = make_job(settings)(str(patient_zip))  # committed, never published
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    log = tmp_path / "worker.log"
    try:
        with idcscan_process(["worker", "--concurrency=1"], env, log):
            wait_for_line(log, "ready.")
            deadline = time.monotonic() + 40
            status = JobStatus.QUEUED
            while time.monotonic() < deadline and not status.finished:
                time.sleep(0.5)
                with sessions() as session:
                    job = session.get(Job, job_id)
                    assert job is not None
                    status = JobStatus(job.status)
        assert status == JobStatus.SUCCEEDED, f"still {status}; log:\n{log.read_text()[-3000:]}"
        assert_consistent(settings, sessions, [job_id], log)
    finally:
        engine.dispose()
