"""The webhook deliverer: POSTs the outbox's due completion webhooks, signed, with backoff.

It runs as a thread of the reconciler (`idcscan scheduler`, and so beside the embedded worker),
never in the worker that scored the job: a slow or dead receiver cannot hold a job or a worker.
A delivery is a row (`webhook_deliveries`, written when the job ended), so a process killed
mid-try loses nothing: the row's claim (`next_attempt_at` moved ahead by a try's longest time)
runs out and the next round sends it again. Receivers therefore see a webhook at least once and
drop a duplicate by its `webhook-id`.

Each try: `requests` with no redirect followed, one short timeout, and no environment proxy or
`.netrc` (a callback gets no credentials of this machine). A 2xx answer delivers; anything else
(another status, a refused connection, a timeout) waits `webhook_backoff_s` doubled per failed
try, up to `webhook_backoff_max_s`, and after `webhook_max_attempts` the delivery is `failed`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from idcscan.core import webhooks
from idcscan.core.db import Client, DeliveryStatus, Job, WebhookDelivery, transaction, utcnow
from idcscan.core.settings import Settings

log = logging.getLogger(__name__)

# Deliveries one round takes on, tried side by side, so that one slow receiver does not hold the
# others; a full round is followed by the next at once, a partial one after `webhook_poll_s`.
ROUND_LIMIT = 8
# A try holds its row for this many of its timeouts (connecting and reading take one each), so
# two deliverers do not send it at once; a try cut short by a killed process is sent again then.
CLAIM_TIMEOUTS = 3


@dataclass(frozen=True)
class Answer:
    """What one try got: the receiver's status code, or why there was none; `final` when no
    later try could do better."""

    status_code: int | None
    error: str | None
    final: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


Post = Callable[[str, bytes, dict[str, str], float], Answer]


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> Answer:
    """One POST, no redirect followed; an answer's body is not read."""
    with requests.Session() as http:
        http.trust_env = False  # no proxy from the environment, no .netrc credentials
        try:
            response = http.post(
                url, data=body, headers=headers, timeout=timeout_s, allow_redirects=False
            )
            response.close()
        except requests.RequestException as exc:
            return Answer(None, exc.__class__.__name__)
    code = response.status_code
    return Answer(code, None if 200 <= code < 300 else f"HTTP {code}")


def backoff_s(settings: Settings, attempts: int) -> float:
    """The pause after the `attempts`-th failed try."""
    return min(settings.webhook_backoff_s * 2 ** (attempts - 1), settings.webhook_backoff_max_s)


def claim_due(session: Session, settings: Settings, now: datetime) -> list[uuid.UUID]:
    """Deliveries due now, each claimed for one try by a conditional UPDATE (another deliverer
    racing for one finds it claimed and leaves it)."""
    due = session.scalars(
        select(WebhookDelivery.job_id)
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING.value,
            WebhookDelivery.next_attempt_at <= now,
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(ROUND_LIMIT)
    ).all()
    held_until = now + timedelta(seconds=settings.webhook_timeout_s * CLAIM_TIMEOUTS)
    claimed = []
    for job_id in due:
        taken: Any = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.job_id == job_id,
                WebhookDelivery.status == DeliveryStatus.PENDING.value,
                WebhookDelivery.next_attempt_at <= now,
            )
            .values(next_attempt_at=held_until)
        )
        if taken.rowcount:
            claimed.append(job_id)
    return claimed


def _prepared(session: Session, job_id: uuid.UUID) -> tuple[str, bytes, dict[str, str]] | Answer:
    """The URL, body and signed headers of one try; an Answer (never sent) when the client has
    no secret or no longer allows the URL (an admin narrowed the allow-list meanwhile)."""
    delivery = session.get(WebhookDelivery, job_id)
    client = session.scalar(select(Client).join(Job).where(Job.id == job_id))
    assert delivery is not None and client is not None
    if client.webhook_secret is None or not webhooks.allowed(delivery.url, client.webhook_prefixes):
        return Answer(None, "the URL is outside the client's allow-list", final=True)
    body = webhooks.event_body(session, delivery)
    headers = webhooks.signed_headers(
        client.webhook_secret, webhooks.message_id(job_id), utcnow(), body
    )
    return delivery.url, body, headers


def _record(session: Session, settings: Settings, job_id: uuid.UUID, answer: Answer) -> None:
    delivery = session.get(WebhookDelivery, job_id)
    assert delivery is not None
    now = utcnow()
    delivery.attempts += 1
    delivery.last_status_code = answer.status_code
    delivery.last_error = answer.error[:200] if answer.error else None
    if answer.delivered:
        delivery.status = DeliveryStatus.DELIVERED.value
        delivery.delivered_at, delivery.next_attempt_at = now, None
    elif answer.final or delivery.attempts >= settings.webhook_max_attempts:
        delivery.status = DeliveryStatus.FAILED.value
        delivery.next_attempt_at = None
    else:
        delivery.next_attempt_at = now + timedelta(seconds=backoff_s(settings, delivery.attempts))


def _try(
    settings: Settings, sessions: sessionmaker[Session], job_id: uuid.UUID, send: Post
) -> None:
    """One try of one claimed delivery, recorded."""
    with sessions() as session:
        prepared = _prepared(session, job_id)
    if isinstance(prepared, Answer):
        answer = prepared
    else:
        url, body, headers = prepared
        answer = send(url, body, headers, settings.webhook_timeout_s)
    with transaction(sessions) as session:
        _record(session, settings, job_id, answer)
    log.info(
        "webhook of job %s: %s",
        job_id,
        "delivered" if answer.delivered else f"not delivered ({answer.error})",
    )


def deliver_due(settings: Settings, sessions: sessionmaker[Session], send: Post = post) -> int:
    """One round: try the deliveries due (at most `ROUND_LIMIT`, side by side); returns how many
    were tried."""
    with transaction(sessions) as session:
        claimed = claim_due(session, settings, utcnow())
    if claimed:
        with ThreadPoolExecutor(len(claimed), thread_name_prefix="idcscan-webhook") as pool:
            for done in [pool.submit(_try, settings, sessions, j, send) for j in claimed]:
                done.result()
    return len(claimed)


def run_forever(settings: Settings, sessions: sessionmaker[Session], stop: threading.Event) -> None:
    """Deliver until `stop` is set: a full round is followed by the next at once, others wait
    `webhook_poll_s`. A failed round is logged, not fatal."""
    pause = settings.webhook_poll_s
    while not stop.wait(pause):
        try:
            full = deliver_due(settings, sessions) == ROUND_LIMIT
        except Exception:
            log.exception("webhooks: round failed")
            full = False
        pause = 0 if full else settings.webhook_poll_s
