"""Completion webhooks at the database and the deliverer: every ending writes its outbox row in
the ending's own transaction; the deliverer backs off, caps, gives up, follows no redirect and
sends nothing an allow-list no longer holds. Real databases, real HTTP (a local receiver, or a
port where nothing listens)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from idcscan.api.auth import set_webhook_prefixes
from idcscan.api.schemas import aware
from idcscan.core import jobstate, webhooks
from idcscan.core.db import (
    Client,
    DeliveryStatus,
    Job,
    JobStatus,
    WebhookDelivery,
    make_engine,
    make_sessionmaker,
    transaction,
    utcnow,
)
from idcscan.core.settings import Settings, get_settings
from idcscan.processes import free_port
from idcscan.worker.webhooks import backoff_s, deliver_due
from tests.conftest import SAMPLE_PATIENTS
from tests.webhook_receiver import Received, Receiver, readme_verify

pytestmark = pytest.mark.integration

SLIDE = str(SAMPLE_PATIENTS / "8916")


@pytest.fixture
def settings(migrated_url: str, tmp_path: Path) -> Settings:
    return get_settings(
        data_dir=tmp_path / "data",
        database_url=migrated_url,
        webhook_backoff_s=0.5,
        webhook_backoff_max_s=2,
        webhook_max_attempts=5,
        webhook_timeout_s=1,
    )


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.database)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def job_with_callback(
    settings: Settings,
    sessions: sessionmaker[Session],
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
    callback_url: str | None,
    prefixes: list[str],
) -> tuple[uuid.UUID, str]:
    """A queued job naming `callback_url`, its client allowing `prefixes`; and the secret."""
    job_id = make_job(settings)(SLIDE)
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(callback_url=callback_url))
        client = session.scalar(select(Client).join(Job).where(Job.id == job_id))
        assert client is not None
        set_webhook_prefixes(session, client, prefixes)
        secret = client.webhook_secret
    assert secret is not None
    return job_id, secret


def cancel(sessions: sessionmaker[Session], job_id: uuid.UUID) -> None:
    with transaction(sessions) as session:
        assert jobstate.cancel(session, job_id, now=utcnow())


def delivery(sessions: sessionmaker[Session], job_id: uuid.UUID) -> WebhookDelivery:
    with sessions() as session:
        row = session.get(WebhookDelivery, job_id)
    assert row is not None
    return row


def make_due(sessions: sessionmaker[Session], job_id: uuid.UUID) -> None:
    with transaction(sessions) as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .values(next_attempt_at=utcnow())
        )


def test_every_ending_writes_one_outbox_row_in_its_own_transaction(
    settings: Settings,
    sessions: sessionmaker[Session],
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
) -> None:
    url = "https://ris.example/hook"
    now = utcnow()
    ids = [job_with_callback(settings, sessions, make_job, url, [url])[0] for _ in range(6)]
    silent = job_with_callback(settings, sessions, make_job, None, [url])[0]
    finished, failed, cancelled, lost, spent, rolled_back = ids
    with transaction(sessions) as session:
        for job_id in (finished, failed, lost, silent):
            assert jobstate.claim(session, job_id, "w", lease_s=60, max_attempts=3, now=now)
        session.execute(update(Job).where(Job.id == spent).values(attempts=3))
    with transaction(sessions) as session:
        assert jobstate.finish(session, finished, "w", JobStatus.SUCCEEDED, now=now)
        assert jobstate.finish(session, failed, "w", JobStatus.FAILED, now=now)
        assert jobstate.finish(session, silent, "w", JobStatus.SUCCEEDED, now=now)
        assert jobstate.cancel(session, cancelled, now=now)
        # Out of attempts: at the next claim, and when the reconciler finds the lease ran out.
        assert not jobstate.claim(session, spent, "w", lease_s=60, max_attempts=3, now=now)
        session.execute(update(Job).where(Job.id == lost).values(attempts=3))
        jobstate.requeue_lost(session, max_attempts=3, now=now + timedelta(minutes=5))
    # An ending rolled back leaves no row either.
    with sessions() as session:
        assert jobstate.cancel(session, rolled_back, now=now)
        session.rollback()
    with sessions() as session:
        rows = {row.job_id: row for row in session.scalars(select(WebhookDelivery))}
    assert {job_id: rows[job_id].event for job_id in rows} == {
        finished: "job.succeeded",
        failed: "job.failed",
        cancelled: "job.cancelled",
        spent: "job.failed",
        lost: "job.failed",
    }
    assert all(row.status == "pending" and row.url == url for row in rows.values())


def test_backoff_doubles_up_to_its_cap_then_the_delivery_is_given_up(
    settings: Settings,
    sessions: sessionmaker[Session],
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
) -> None:
    down = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    job_id, _ = job_with_callback(settings, sessions, make_job, down + "hook", [down])
    cancel(sessions, job_id)
    delays = []
    for attempt in range(1, settings.webhook_max_attempts + 1):
        make_due(sessions, job_id)
        before = utcnow()
        assert deliver_due(settings, sessions) == 1
        assert deliver_due(settings, sessions) == 0  # not due again before its pause
        row = delivery(sessions, job_id)
        assert row.attempts == attempt
        assert row.last_status_code is None and row.last_error == "ConnectionError"
        if row.next_attempt_at is not None:
            delays.append((aware(row.next_attempt_at) - before).total_seconds())
    assert [round(backoff_s(settings, n), 1) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 2.0]
    for delay, expected in zip(delays, (0.5, 1.0, 2.0, 2.0), strict=True):
        assert expected <= delay < expected + 1.0
    assert row.status == DeliveryStatus.FAILED and row.next_attempt_at is None
    with sessions() as session:
        assert jobstate.status_of(session, job_id) == JobStatus.CANCELLED  # the job unaffected


def test_a_redirect_is_not_followed(
    settings: Settings,
    sessions: sessionmaker[Session],
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
    receiver: Receiver,
) -> None:
    receiver.answers["/hook"] = [302]
    job_id, secret = job_with_callback(
        settings, sessions, make_job, receiver.url + "/hook", [receiver.url + "/"]
    )
    cancel(sessions, job_id)
    assert deliver_due(settings, sessions) == 1
    row = delivery(sessions, job_id)
    assert (row.status, row.attempts, row.last_status_code) == ("pending", 1, 302)
    assert [r.path for r in receiver.received] == ["/hook"]  # never /elsewhere
    (sent,) = receiver.received
    assert readme_verify()(secret, sent.headers, sent.body)


def test_a_url_no_longer_allowed_is_never_sent(
    settings: Settings,
    sessions: sessionmaker[Session],
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
    receiver: Receiver,
) -> None:
    job_id, _ = job_with_callback(
        settings, sessions, make_job, receiver.url + "/hook", [receiver.url + "/"]
    )
    cancel(sessions, job_id)
    with transaction(sessions) as session:  # an admin narrows the allow-list meanwhile
        client = session.scalar(select(Client).join(Job).where(Job.id == job_id))
        assert client is not None
        set_webhook_prefixes(session, client, ["https://elsewhere.example/"])
    assert deliver_due(settings, sessions) == 1
    row = delivery(sessions, job_id)
    assert row.status == "failed" and "allow-list" in (row.last_error or "")
    assert receiver.received == []


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://ris.example/hooks/idc", True),
        ("https://ris.example/hooks?case=1", True),
        ("https://ris.example/hooksmith", False),  # not at a path boundary
        ("https://ris.example.evil.test/hooks/", False),
        ("https://ris.example/hooks@evil.test/", False),  # not at a path boundary either
        ("https://user@ris.example/hooks/x", False),
        ("https://ris.example/hooks/../admin", False),
        ("http://ris.example/hooks/x", False),  # another scheme than allowed
        ("ftp://ris.example/hooks/x", False),
        ("https://ris.example/hooks/\nx", False),
        ("https://ris.example:99999/hooks/x", False),
    ],
)
def test_the_allow_list_matches_at_a_boundary(url: str, ok: bool) -> None:
    assert webhooks.allowed(url, ["https://ris.example/hooks"]) is ok


def test_admin_prefixes_are_plain_http_urls() -> None:
    for bad in ("ris.example/", "javascript:alert(1)", "https://u:p@ris.example/", "https://x/?q"):
        with pytest.raises(webhooks.CallbackRefused):
            webhooks.check_prefix(bad)
    assert webhooks.check_prefix("https://ris.example/hooks/") == "https://ris.example/hooks/"


def test_a_slow_receiver_does_not_hold_the_others(
    settings: Settings,
    sessions: sessionmaker[Session],
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
) -> None:
    def slow(received: Received) -> None:
        if received.path == "/slow":
            time.sleep(0.8)

    receiver = Receiver(on_request=slow)
    try:
        prefix = receiver.url + "/"
        held, quick = (
            job_with_callback(settings, sessions, make_job, receiver.url + path, [prefix])[0]
            for path in ("/slow", "/quick")
        )
        cancel(sessions, held)
        cancel(sessions, quick)
        assert deliver_due(settings, sessions) == 2
        assert {delivery(sessions, j).status for j in (held, quick)} == {"delivered"}
        (slow_one,), (quick_one,) = receiver.at("/slow"), receiver.at("/quick")
        assert abs(quick_one.at - slow_one.at) < 0.5  # side by side, not one after the other
    finally:
        receiver.close()
