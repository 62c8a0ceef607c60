"""Completion webhooks, the parts the API and the worker share: which callback URLs a client may
name, the per-client secret, the signature and the body a receiver gets.

Signed per Standard Webhooks (standardwebhooks.com): headers `webhook-id`, `webhook-timestamp`
and `webhook-signature` = `v1,` + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")), the
secret being `whsec_` + base64 of 32 random bytes. The `standardwebhooks` package (the spec's
own reference library, pure Python, no dependencies) signs, so that what we send is what every
receiver's library of that spec checks; the README shows the ten lines that check it by hand.

SSRF care: a callback is http(s) only, within a prefix an admin allowed for that client, with
no user-info part and no `..` segment; the deliverer follows no redirect.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from idcscan.core.db import ConfusionStat, Job, SlideResult, WebhookDelivery
from idcscan.core.summary import SlideSummary

MAX_URL_LENGTH = 1000  # a multipart text field holds 1024 bytes
SECRET_PREFIX = "whsec_"


class CallbackRefused(ValueError):
    """A callback URL (or an allow-list prefix) that is not acceptable; the message says why."""


def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _checked(url: str, what: str) -> str:
    """`url` if it is a plain absolute http(s) URL, else CallbackRefused."""
    if not url or len(url) > MAX_URL_LENGTH or any(c.isspace() or ord(c) < 32 for c in url):
        raise CallbackRefused(f"a {what} is an http(s) URL of at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise CallbackRefused(f"the {what} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused(f"a {what} is an absolute http or https URL")
    if "@" in parts.netloc:
        raise CallbackRefused(f"a {what} carries no user name or password")
    if ".." in parts.path.split("/"):
        raise CallbackRefused(f"a {what} has no '..' segment")
    return url


def check_prefix(prefix: str) -> str:
    """An allow-list entry as an admin gives it: an http(s) URL without query or fragment."""
    _checked(prefix, "webhook prefix")
    if urlsplit(prefix).query or urlsplit(prefix).fragment or prefix.endswith(("?", "#")):
        raise CallbackRefused("a webhook prefix has no query or fragment")
    return prefix


def allowed(url: str, prefixes: list[str] | None) -> bool:
    """Whether `url` starts with one of `prefixes` at a boundary: `https://a.org` allows
    `https://a.org/x` but not `https://a.org.evil.example/`."""
    try:
        _checked(url, "callback_url")
    except CallbackRefused:
        return False
    for prefix in prefixes or []:
        rest = url[len(prefix) :]
        if url.startswith(prefix) and (prefix.endswith("/") or rest[:1] in ("", "/", "?", "#")):
            return True
    return False


def check_callback(url: str, prefixes: list[str] | None) -> str:
    """`url` if the client may name it as a job's callback, else CallbackRefused."""
    _checked(url, "callback_url")
    if not allowed(url, prefixes):
        raise CallbackRefused("the callback_url is outside this client's webhook allow-list")
    return url


def message_id(job_id: uuid.UUID) -> str:
    """`webhook-id`: the same on every attempt, so a receiver can drop a duplicate."""
    return f"msg_{job_id.hex}"


def signed_headers(secret: str, msg_id: str, at: datetime, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (its own timestamp: a receiver refuses old
    ones, so a retry is signed afresh)."""
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body.decode()),
    }


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def event_body(session: Session, delivery: WebhookDelivery) -> bytes:
    """The job's summary as the receiver gets it: `{type, timestamp, data}` (Standard Webhooks'
    shape). The same bytes on every attempt: a job that ended changes no more."""
    job = session.get(Job, delivery.job_id)
    assert job is not None  # the delivery row is deleted with its job
    result = session.get(SlideResult, job.id)
    confusion = session.get(ConfusionStat, job.id)
    data: dict[str, Any] = {
        "id": str(job.id),
        "status": job.status,
        "model_id": job.model_id,
        "slide_sha256": job.slide_sha256,
        "attempts": job.attempts,
        "error": {"kind": job.error_kind} if job.error_kind else None,
        "created_at": _iso(job.created_at),
        "finished_at": _iso(job.finished_at),
        # Every field of the slide summary, by its type: a field added there is sent too.
        "summary": {f.name: getattr(result, f.name) for f in dataclasses.fields(SlideSummary)}
        if result is not None
        else None,
        "confusion": {k: getattr(confusion, k) for k in ("tp", "fp", "tn", "fn")}
        if confusion is not None
        else None,
        "links": {"job": f"/v1/jobs/{job.id}", "result": f"/v1/jobs/{job.id}/result"},
    }
    envelope = {"type": delivery.event, "timestamp": _iso(delivery.created_at), "data": data}
    return json.dumps(envelope, separators=(",", ":"), default=str).encode()


def deliveries_of(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, WebhookDelivery]:
    """The delivery rows of these jobs, by job id (the API shows them on the job)."""
    if not job_ids:
        return {}
    rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id.in_(job_ids)))
    return {row.job_id: row for row in rows}
