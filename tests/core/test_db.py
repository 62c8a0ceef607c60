"""The schema enforces what the API and workers rely on, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from idcscan.core.db import Client, Job, JobStatus, Model, TileScore, make_engine, make_sessionmaker

pytestmark = pytest.mark.integration


@pytest.fixture
def sessions(migrated_url: str):
    engine = make_engine(migrated_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _model(version: str, active: bool = False) -> Model:
    return Model(
        version=version,
        architecture="resnet18",
        onnx_sha256=uuid.uuid4().hex * 2,
        location=f"/models/{version}.onnx",
        tile_spec={"mpp": 4.0},
        threshold=0.5,
        active=active,
    )


def _client_and_model(session) -> tuple[Client, Model]:
    client = Client(
        name=f"hospital-{uuid.uuid4().hex[:6]}", key_prefix=uuid.uuid4().hex[:8], key_hash="x"
    )
    model = _model(f"v-{uuid.uuid4().hex[:6]}")
    session.add_all([client, model])
    session.flush()
    return client, model


def test_only_one_model_can_be_active(sessions) -> None:
    with sessions() as session:
        session.add(_model("a", active=True))
        session.add(_model("b", active=False))
        session.commit()
        session.add(_model("c", active=True))
        with pytest.raises(IntegrityError):
            session.commit()


def test_idempotency_key_is_unique_per_client(sessions) -> None:
    with sessions() as session:
        client, model = _client_and_model(session)
        other, _ = _client_and_model(session)
        common = {"model_id": model.id, "slide_uri": "s", "idempotency_key": "retry-1"}
        session.add(Job(client_id=client.id, **common))
        session.add(Job(client_id=other.id, **common))  # another client may reuse a key
        session.commit()
        session.add(Job(client_id=client.id, **common))
        with pytest.raises(IntegrityError):
            session.commit()


def test_status_is_checked(sessions) -> None:
    with sessions() as session:
        client, model = _client_and_model(session)
        session.add(Job(client_id=client.id, model_id=model.id, slide_uri="s", status="exploded"))
        with pytest.raises(IntegrityError):
            session.commit()


def test_tile_scores_are_keyed_by_grid_position(sessions) -> None:
    with sessions() as session:
        client, model = _client_and_model(session)
        job = Job(client_id=client.id, model_id=model.id, slide_uri="s")
        session.add(job)
        session.flush()
        session.add(TileScore(job_id=job.id, row=0, col=0, x=0, y=0, probability=0.1))
        session.commit()
        session.add(TileScore(job_id=job.id, row=0, col=0, x=0, y=0, probability=0.9))
        with pytest.raises(IntegrityError):
            session.commit()


def test_deleting_a_job_deletes_its_tiles(sessions) -> None:
    with sessions() as session:
        client, model = _client_and_model(session)
        job = Job(client_id=client.id, model_id=model.id, slide_uri="s")
        session.add(job)
        session.flush()
        session.add_all(
            TileScore(job_id=job.id, row=r, col=0, x=0, y=50 * r, probability=0.5) for r in range(3)
        )
        session.commit()
        assert job.status == JobStatus.QUEUED
        session.delete(job)
        session.commit()
        assert session.scalar(select(func.count()).select_from(TileScore)) == 0
