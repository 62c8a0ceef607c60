"""The schema enforces what the API and workers rely on, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from idcscan.core.db import Client, Job, JobStatus, Model, TileScore, make_engine, make_sessionmaker
from tests import factories

pytestmark = pytest.mark.integration


@pytest.fixture
def sessions(migrated_url: str):
    engine = make_engine(migrated_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _client_and_model(session) -> tuple[Client, Model]:
    return factories.client(session)[0], factories.model(session)


def test_only_one_model_can_be_active(sessions) -> None:
    with sessions() as session:
        factories.model(session, "a", active=True)
        factories.model(session, "b", active=False)
        session.commit()
        with pytest.raises(IntegrityError):
            factories.model(session, "c", active=True)


def test_idempotency_key_is_unique_per_client(sessions) -> None:
    with sessions() as session:
        client, model = _client_and_model(session)
        other, _ = _client_and_model(session)
        factories.job(session, client, model, idempotency_key="retry-1")
        factories.job(session, other, model, idempotency_key="retry-1")  # another client may
        session.commit()
        with pytest.raises(IntegrityError):
            factories.job(session, client, model, idempotency_key="retry-1")


def test_status_is_checked(sessions) -> None:
    with sessions() as session:
        client, model = _client_and_model(session)
        session.add(Job(client_id=client.id, model_id=model.id, slide_uri="s", status="exploded"))
        with pytest.raises(IntegrityError):
            session.commit()


def test_tile_scores_are_keyed_by_grid_position(sessions) -> None:
    with sessions() as session:
        client, model = _client_and_model(session)
        job = factories.job(session, client, model)
        session.add(TileScore(job_id=job.id, row=0, col=0, x=0, y=0, probability=0.1))
        session.commit()
        session.add(TileScore(job_id=job.id, row=0, col=0, x=0, y=0, probability=0.9))
        with pytest.raises(IntegrityError):
            session.commit()


def test_deleting_a_job_deletes_its_tiles(sessions) -> None:
    with sessions() as session:
        client, model = _client_and_model(session)
        job = factories.job(session, client, model)
        session.add_all(
            TileScore(job_id=job.id, row=r, col=0, x=0, y=50 * r, probability=0.5) for r in range(3)
        )
        session.commit()
        assert job.status == JobStatus.QUEUED
        session.delete(job)
        session.commit()
        assert session.scalar(select(func.count()).select_from(TileScore)) == 0


@pytest.mark.parametrize("status", list(JobStatus))
def test_a_factory_job_holds_what_its_state_implies(sessions, status: JobStatus) -> None:
    """Tests build jobs in every state with `tests.factories.job`: each must look like one the
    service left there (a running job leased, an ended one cleared as `jobstate.ended` clears)."""
    with sessions() as session:
        client, model = _client_and_model(session)
        job = factories.job(session, client, model, status)
        session.commit()
        stored = session.get(Job, job.id)
        assert stored is not None and stored.status == status.value
        leased = stored.lease_owner is not None and stored.lease_expires_at is not None
        assert leased == (status == JobStatus.RUNNING)
        assert (stored.finished_at is not None) == status.finished
        assert (stored.error_kind is not None) == (status == JobStatus.FAILED)
        assert stored.attempts == (0 if status == JobStatus.QUEUED else 1)
