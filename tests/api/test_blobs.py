"""Content-addressed blobs are shared by every job with the same bytes, whoever submitted them:
a failing request never deletes one; only garbage collection does, once no job names it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from idcscan.core.db import Job
from idcscan.core.migrate import upgrade
from idcscan.core.settings import Settings, get_settings
from idcscan.core.storage import local_path
from tests.conftest import SAMPLE_SVS

from .conftest import Service

pytestmark = pytest.mark.integration


def _waiting_locks(engine, count: int, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Until `count` statements of the API wait for a row lock held by this test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            waiting = connection.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))
        if waiting >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"{count} requests never waited for the test's locks")


def test_a_failing_request_never_deletes_a_blob_another_tenants_job_uses(
    serve: Callable[[Settings], Service], postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    # The race of the report, forced with row locks on PostgreSQL: tenant B stores the slide
    # first, tenant A finds it stored and names it in its job; B's request then fails (its
    # Idempotency-Key is taken) while A's commit is still on its way.
    upgrade(postgres_url)
    service = serve(
        get_settings(data_dir=tmp_path / "data", database_url=postgres_url, broker_url=redis_url)
    )
    id_a, key_a = service.new_client()
    id_b, key_b = service.new_client()
    engine = create_engine(postgres_url)
    taken_key, hold_a = engine.connect(), engine.connect()
    try:
        # A job of B's holding the Idempotency-Key B is about to send, not committed yet...
        taken_key.execute(
            text(
                "INSERT INTO jobs (id, client_id, model_id, status, slide_uri, idempotency_key,"
                " tiles_done, attempts, created_at, updated_at)"
                " VALUES (:id, :client, :model, 'queued', 'elsewhere', 'order-1', 0, 0, now(), now())"
            ),
            {"id": uuid.uuid4(), "client": id_b, "model": service.model_id},
        )
        # ...and A's client row locked, so that A's insert waits on its foreign key.
        hold_a.execute(text("SELECT id FROM clients WHERE id = :id FOR UPDATE"), {"id": id_a})
        with ThreadPoolExecutor(2) as pool:
            from_b = pool.submit(
                service.submit, key_b, SAMPLE_SVS, headers={"Idempotency-Key": "order-1"}
            )
            _waiting_locks(engine, 1)
            from_a = pool.submit(service.submit, key_a, SAMPLE_SVS)
            _waiting_locks(engine, 2)
            taken_key.commit()  # B's insert fails on the key; B answers with that job
            assert from_b.result(60).status_code == 202
            hold_a.commit()  # now A's job commits, naming the blob B's request stored
            accepted = from_a.result(60)
    finally:
        taken_key.close()
        hold_a.close()
        engine.dispose()
    assert accepted.status_code == 202, accepted.text
    with service.db() as session:
        job = session.get(Job, uuid.UUID(accepted.json()["id"]))
        assert job is not None
    assert local_path(job.slide_uri).read_bytes() == SAMPLE_SVS.read_bytes()
    # The service still answers and scores the same bytes for anyone.
    assert service.submit(key_b, SAMPLE_SVS).status_code == 202
