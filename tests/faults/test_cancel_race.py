"""A cancel racing the end of a job: nothing of the job's results survives a cancel, and the
API's answer tells the state the job is in after its own update.

The API is a real HTTP server (SQLite with its SQL broker, and PostgreSQL with Redis); the worker
is a JobRunner in the test's process whose storage sends the cancel over HTTP the moment the
worker starts writing the job's output files.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from idcscan.core.db import (
    ConfusionStat,
    Job,
    JobStatus,
    SlideResult,
    TileScore,
    transaction,
)
from idcscan.core.settings import Settings
from idcscan.core.storage import Storage
from idcscan.worker.jobs import JobRunner, results_prefix
from idcscan.worker.modelcache import ModelCache
from tests.api.conftest import KOMBU_NOLOAD, Service
from tests.conftest import SAMPLE_PATIENTS

pytestmark = [pytest.mark.integration, pytest.mark.faults, KOMBU_NOLOAD]


class CancelWhileStoring(Storage):
    """The service's real storage; its first write of a result file first cancels the job over
    HTTP, as a client's cancel arriving while the worker stores outputs would."""

    def __init__(self, root: str, cancel: Callable[[], requests.Response]) -> None:
        super().__init__(root)
        self.cancel = cancel
        self.answers: list[requests.Response] = []

    def put_bytes(self, key: str, data: bytes) -> str:
        if key.startswith("results/") and not self.answers:
            self.answers.append(self.cancel())
        return super().put_bytes(key, data)


def _rows(sessions: sessionmaker[Session], job_id: uuid.UUID) -> int:
    with sessions() as session:
        return sum(
            int(session.scalar(select(func.count()).select_from(t).where(t.job_id == job_id)) or 0)
            for t in (TileScore, SlideResult, ConfusionStat)
        )


@pytest.fixture
def with_tiny_model(
    service_settings: Settings, activate_tiny_model: Callable[[Settings], None]
) -> Settings:
    activate_tiny_model(service_settings)
    return service_settings


def _submit_patient(service: Service, key: str, tmp_path: Path) -> uuid.UUID:
    archive = shutil.make_archive(str(tmp_path / "8916"), "zip", SAMPLE_PATIENTS, "8916")
    response = service.submit(key, Path(archive), name="8916.zip")
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["id"])


def test_cancel_while_the_worker_stores_outputs_leaves_nothing(
    serve: Callable[[Settings], Service], with_tiny_model: Settings, tmp_path: Path
) -> None:
    settings = with_tiny_model
    service = serve(settings)
    key = service.add_client()
    job_id = _submit_patient(service, key, tmp_path)
    storage = CancelWhileStoring(
        settings.storage, lambda: service.post(f"/v1/jobs/{job_id}/cancel", key)
    )
    runner = JobRunner(settings, service.db, ModelCache(settings, threads=1), storage=storage)

    outcome = runner.run(job_id)

    [answer] = storage.answers
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == JobStatus.CANCELLED
    assert outcome == "cancelled"
    with service.db() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.CANCELLED
        assert job.lease_owner is None and job.lease_expires_at is None
    assert _rows(service.db, job_id) == 0
    assert not storage.exists(results_prefix(job_id))
    # The cancel is final: another delivery of the job does not run it.
    assert runner.run(job_id) == "skipped"
    assert service.get(f"/v1/jobs/{job_id}", key).json()["status"] == JobStatus.CANCELLED
    assert service.get("/healthz").status_code == 200


def test_cancel_losing_to_the_final_commit_answers_the_state_after_it(
    serve: Callable[[Settings], Service], with_tiny_model: Settings, tmp_path: Path
) -> None:
    """The API reads the job as running, the worker commits `succeeded` at that instant, the
    cancel's conditional UPDATE changes nothing: the answer is 409 `job-finished` naming
    `succeeded`, never a misleading "already running"."""
    from idcscan.api.app import create_app

    settings = with_tiny_model
    service = serve(settings)  # for its client and job helpers
    key = service.add_client()
    job_id = _submit_patient(service, key, tmp_path)
    runner = JobRunner(settings, service.db, ModelCache(settings, threads=1))
    claim = runner.claim(job_id)
    assert claim is not None
    app = create_app(settings)
    engine = app.extensions["idcscan.engine"]
    committed: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _worker_commits_first(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement.startswith("UPDATE jobs") and not committed:
            committed.append("succeeded")
            with transaction(service.db) as session:  # the worker's connection, not the API's
                session.execute(
                    Job.__table__.update()
                    .where(Job.id == job_id)
                    .values(status=JobStatus.SUCCEEDED.value, lease_owner=None)
                )

    try:
        answer = app.test_client().post(
            f"/v1/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {key}"}
        )
    finally:
        engine.dispose()
    assert committed == ["succeeded"], "the race was not staged"
    assert answer.status_code == 409, answer.get_data(as_text=True)
    assert answer.mimetype == "application/problem+json"
    body = answer.get_json()
    assert body["type"] == "urn:idcscan:problem:job-finished"
    assert body["status_now"] == JobStatus.SUCCEEDED
    assert "running" not in body["detail"]
