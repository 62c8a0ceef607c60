"""Completion webhooks end to end: a real embedded worker (`idcscan worker`, its scheduler beside
it) scores real jobs and a real HTTP receiver gets them, checked with the README's recipe:
- a receiver that answers 200 gets one signed POST, which verifies;
- one that answers 500 twice, then 200, gets three, all verifying, and the job shows 3 attempts;
- one that is down costs the job nothing: it succeeds, and the attempts back off;
- a scheduler killed in the middle of a try loses nothing: the next one sends it again."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from idcscan.api.auth import set_webhook_prefixes
from idcscan.core import jobstate
from idcscan.core.db import (
    Client,
    Job,
    JobStatus,
    WebhookDelivery,
    make_engine,
    make_sessionmaker,
    transaction,
    utcnow,
)
from idcscan.core.migrate import upgrade
from idcscan.core.settings import Settings, get_settings
from idcscan.processes import free_port
from tests.api.conftest import KOMBU_NOLOAD
from tests.faults.checks import assert_consistent
from tests.processes import idcscan_process, wait_for_line
from tests.webhook_receiver import Received, Receiver, readme_verify

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow, KOMBU_NOLOAD]


def embedded(tmp_path: Path, **env: str) -> tuple[Settings, dict[str, str]]:
    data = tmp_path / "data"
    environment = {
        "IDCSCAN_DATA_DIR": str(data),
        "IDCSCAN_RECONCILE_INTERVAL_S": "1",
        "IDCSCAN_INFERENCE_THREADS": "1",
        "IDCSCAN_LOG_LEVEL": "INFO",
        "IDCSCAN_WEBHOOK_POLL_S": "0.2",
        **env,
    }
    settings = get_settings(data_dir=data)
    upgrade(settings.database)
    return settings, environment


def with_callbacks(
    sessions: sessionmaker[Session], callbacks: dict[uuid.UUID, str], prefixes: list[str]
) -> str:
    """Name each job's callback and allow `prefixes` to their client; the client's secret."""
    with transaction(sessions) as session:
        for job_id, url in callbacks.items():
            session.execute(update(Job).where(Job.id == job_id).values(callback_url=url))
        client = session.scalar(select(Client).join(Job).where(Job.id == next(iter(callbacks))))
        assert client is not None
        set_webhook_prefixes(session, client, prefixes)
        assert client.webhook_secret is not None
        return client.webhook_secret


def rows(sessions: sessionmaker[Session]) -> dict[uuid.UUID, WebhookDelivery]:
    with sessions() as session:
        return {row.job_id: row for row in session.scalars(select(WebhookDelivery))}


def until(check: Callable[[], bool], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not reached in {timeout} s; log:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def verified(secret: str, sent: Received) -> dict[str, object]:
    """The body, checked with the README's recipe and with the spec's own library."""
    assert readme_verify()(secret, sent.headers, sent.body)
    assert not readme_verify()(secret, sent.headers, sent.body + b" ")
    payload: dict[str, object] = Webhook(secret).verify(sent.body, sent.headers)
    assert payload == json.loads(sent.body)
    return payload


def test_a_real_worker_sends_signed_webhooks_retries_and_backs_off(
    tmp_path: Path,
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
    patient_zip: Path,
) -> None:
    settings, env = embedded(tmp_path, IDCSCAN_WEBHOOK_BACKOFF_S="0.3")
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    receiver = Receiver(answers={"/flaky": [500, 500, 200]})
    down = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    make = make_job(settings)
    ok, flaky, unreachable = (make(str(patient_zip)) for _ in range(3))
    secret = with_callbacks(
        sessions,
        {ok: receiver.url + "/ok", flaky: receiver.url + "/flaky", unreachable: down + "hook"},
        [receiver.url + "/", down],
    )
    log = tmp_path / "worker.log"
    try:
        with idcscan_process(["worker", "--concurrency=1"], env, log):
            wait_for_line(log, "ready.")

            def settled() -> bool:
                now = rows(sessions)
                return (
                    {now[j].status for j in (ok, flaky) if j in now} == {"delivered"}
                    and unreachable in now
                    and now[unreachable].attempts >= 3
                )

            until(settled, 120, log)
        deliveries = rows(sessions)
        with sessions() as session:
            statuses = {session.get(Job, j).status for j in (ok, flaky, unreachable)}  # type: ignore[union-attr]
        assert statuses == {JobStatus.SUCCEEDED.value}

        (sent,) = receiver.at("/ok")
        payload = verified(secret, sent)
        assert payload["type"] == "job.succeeded"
        data = payload["data"]
        assert isinstance(data, dict)
        assert data["id"] == str(ok) and data["status"] == "succeeded"
        assert data["summary"]["slide_call"] in ("idc", "no_idc", "no_tissue")
        assert sent.headers["webhook-id"] == f"msg_{ok.hex}"
        assert (deliveries[ok].attempts, deliveries[ok].last_status_code) == (1, 200)

        tries = receiver.at("/flaky")
        assert len(tries) == 3
        assert len({t.headers["webhook-id"] for t in tries}) == 1  # one message, tried 3 times
        for sent in tries:
            verified(secret, sent)
        assert deliveries[flaky].attempts == 3
        assert deliveries[flaky].status == "delivered"
        assert deliveries[flaky].last_status_code == 200

        lost = deliveries[unreachable]
        assert lost.status == "pending" and lost.last_error == "ConnectionError"
        assert lost.next_attempt_at is not None  # waiting, backed off (its pauses: 0.3, 0.6, ...)
        assert_consistent(settings, sessions, [ok, flaky, unreachable], log)
    finally:
        receiver.close()
        engine.dispose()


def test_a_try_cut_short_by_a_killed_scheduler_is_sent_again(
    tmp_path: Path,
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
    patient_zip: Path,
) -> None:
    settings, env = embedded(tmp_path, IDCSCAN_WEBHOOK_TIMEOUT_S="1")
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    arrived = threading.Event()

    def hold_the_first(received: Received) -> None:
        if not arrived.is_set():
            arrived.set()
            time.sleep(0.5)  # the scheduler is killed while it waits for this answer

    receiver = Receiver(on_request=hold_the_first)
    job_id = make_job(settings)(str(patient_zip))
    secret = with_callbacks(sessions, {job_id: receiver.url + "/hook"}, [receiver.url + "/"])
    with transaction(sessions) as session:  # ended: the outbox row is written with the ending
        assert jobstate.cancel(session, job_id, now=utcnow())
    log = tmp_path / "scheduler.log"
    try:
        with idcscan_process(["scheduler"], env, log) as scheduler:
            assert arrived.wait(30), log.read_text()[-3000:]
            os.killpg(scheduler.pid, signal.SIGKILL)
            scheduler.wait(10)
        row = rows(sessions)[job_id]
        assert (row.status, row.attempts) == ("pending", 0)  # the try never got recorded
        with idcscan_process(["scheduler"], env, log):
            until(lambda: rows(sessions)[job_id].status == "delivered", 30, log)
        first, second = receiver.received
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert verified(secret, second)["type"] == "job.cancelled"
        assert rows(sessions)[job_id].attempts == 1
        assert_consistent(settings, sessions, [job_id])
    finally:
        receiver.close()
        engine.dispose()
