"""Viewer links: a short-lived capability to look at one job, signed by the API.

A link is `/view/<token>/`, the token `<job id>.<client id>.<expiry>.<signature>`: HMAC-SHA256
with the service's secret over the job, the client that minted it and the expiry (Unix seconds).
A browser (or a PACS opening the viewer for a reader) then needs no API key, and every URL the
viewer loads sits under the same token, so the page, its tiles and its downloads carry it without
a cookie. Each request still checks that the client is not revoked and still owns the job: a link
is worth no more than the key that minted it, and for no longer than its expiry.

The token travels in the path, not a query string, so relative URLs inside the viewer keep it;
the viewer's pages send `Referrer-Policy: no-referrer` so that it never leaves in a Referer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from idcscan.core.settings import Settings

SECRET_FILE = "secret_key"


@dataclass(frozen=True)
class ViewerGrant:
    """What a valid token allows: one job, as the client that minted the link."""

    job_id: uuid.UUID
    client_id: int
    expires_at: int


def signing_key(settings: Settings) -> bytes:
    """`IDCSCAN_SECRET_KEY`, else a random key made once in the data folder (file 0600) and
    shared by every process on this host; created with O_EXCL, so racing processes agree."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    path = Path(settings.data_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    key = secrets.token_urlsafe(48).encode()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


def _signature(key: bytes, message: str) -> str:
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def mint(key: bytes, job_id: uuid.UUID, client_id: int, expires_at: int) -> str:
    """A token for `job_id` as `client_id`, valid until `expires_at` (Unix seconds)."""
    message = f"{job_id}.{client_id}.{expires_at}"
    return f"{message}.{_signature(key, message)}"


def verify(key: bytes, token: str, now: float | None = None) -> ViewerGrant | None:
    """The grant of a well-formed, correctly signed, unexpired token; None for anything else
    (the caller answers every such case alike)."""
    parts = token.split(".")
    if len(parts) != 4:
        return None
    job, client, expiry, signature = parts
    if not hmac.compare_digest(_signature(key, f"{job}.{client}.{expiry}"), signature):
        return None
    # Signed by us, so well formed; the checks below only guard against a changed format.
    try:
        grant = ViewerGrant(uuid.UUID(job), int(client), int(expiry))
    except ValueError:
        return None
    if grant.expires_at <= (time.time() if now is None else now):
        return None
    return grant
