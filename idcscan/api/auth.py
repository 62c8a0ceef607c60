"""API keys: generated once, stored hashed, found by their prefix; the Bearer check of every request.

A key is `idc_<prefix>_<secret>`: the 8-hex-character prefix is stored in clear and indexed so
that a request costs one lookup, the whole key is stored as its SHA-256. A salted slow hash
(scrypt) protects low-entropy passwords; these keys carry 256 random bits, so a fast hash is as
safe and keeps the check off the latency budget. The comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Flask, current_app, g, request
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from idcscan.api.audit import audit
from idcscan.api.problems import Problem
from idcscan.core import webhooks
from idcscan.core.db import Client, Role, utcnow

KEY_PREFIX_LEN = 8
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Caller:
    """The authenticated client of the current request (a plain value, no ORM session attached)."""

    id: int
    name: str
    role: str

    @property
    def admin(self) -> bool:
        return self.role == Role.ADMIN.value


def new_key() -> tuple[str, str, str]:
    """A fresh key, its lookup prefix and its stored hash."""
    prefix = secrets.token_hex(KEY_PREFIX_LEN // 2)
    key = f"idc_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, hash_key(key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _prefix_of(key: str) -> str | None:
    parts = key.split("_")
    if len(parts) < 3 or parts[0] != "idc" or len(parts[1]) != KEY_PREFIX_LEN:
        return None
    return parts[1]


def find_client(session: Session, key: str) -> Client | None:
    """The active client holding `key`, or None (unknown, wrong or revoked)."""
    prefix = _prefix_of(key)
    if prefix is None:
        return None
    client = session.scalar(select(Client).where(Client.key_prefix == prefix))
    if client is None or not hmac.compare_digest(client.key_hash, hash_key(key)):
        return None
    return None if client.revoked else client


# Client management, shared by `idcscan clients ...` and the admin routes.


def add_client(
    session: Session, name: str, admin: bool, by: int | None = None
) -> tuple[Client, str]:
    key, prefix, digest = new_key()
    client = Client(
        name=name,
        key_prefix=prefix,
        key_hash=digest,
        role=(Role.ADMIN if admin else Role.CLIENT).value,
    )
    session.add(client)
    session.flush()
    audit(session, by, "client.create", "client", client.id, role=client.role)
    return client, key


def revoke_client(session: Session, client: Client, by: int | None = None) -> None:
    if client.revoked_at is None:
        client.revoked_at = utcnow()
    audit(session, by, "client.revoke", "client", client.id)


def rotate_key(session: Session, client: Client, by: int | None = None) -> str:
    """A new key for `client`; the old one stops working when this commits."""
    key, prefix, digest = new_key()
    session.execute(
        update(Client).where(Client.id == client.id).values(key_prefix=prefix, key_hash=digest)
    )
    session.refresh(client)
    audit(session, by, "client.rotate", "client", client.id)
    return key


def set_webhook_prefixes(
    session: Session, client: Client, prefixes: list[str], by: int | None = None
) -> str | None:
    """Replace `client`'s webhook allow-list (an empty one allows no callback). The first time,
    the client also gets its signing secret, returned this once; None afterwards (see
    `rotate_webhook_secret`). A prefix that is not a plain http(s) URL: CallbackRefused."""
    client.webhook_prefixes = [webhooks.check_prefix(p) for p in dict.fromkeys(prefixes)]
    secret = None
    if client.webhook_secret is None:
        secret = client.webhook_secret = webhooks.new_secret()
    audit(session, by, "client.webhooks", "client", client.id, prefixes=len(prefixes))
    return secret


def rotate_webhook_secret(session: Session, client: Client, by: int | None = None) -> str:
    """A new signing secret for `client`; every webhook sent after the commit is signed with it,
    retries of earlier ones too."""
    client.webhook_secret = webhooks.new_secret()
    audit(session, by, "client.webhook_secret", "client", client.id)
    return client.webhook_secret


def caller() -> Caller:
    return cast(Caller, g.caller)


def admin_required(view: F) -> F:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not caller().admin:
            raise Problem(403, "admin-required", "This action needs an admin key.")
        return view(*args, **kwargs)

    return cast(F, wrapper)


PUBLIC_ENDPOINTS = {"ops.healthz", "ops.readyz", "ops.openapi", "ops.docs", "static"}


def init_app(app: Flask) -> None:
    """Every route but the public operations ones needs `Authorization: Bearer <key>`."""

    @app.before_request
    def _authenticate() -> None:
        if request.endpoint is None or request.endpoint in PUBLIC_ENDPOINTS:
            return
        if request.endpoint.startswith("openapi_"):  # spectree's own documentation pages
            return
        if request.blueprint == "viewer":  # pages with no data, or a signed link (viewer.py)
            return
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _unauthorized("Send `Authorization: Bearer <key>`.")
        with current_app.extensions["idcscan.db"]() as session:
            client = find_client(session, key.strip())
            if client is None:
                raise _unauthorized("The key is unknown or revoked.")
            g.caller = Caller(id=client.id, name=client.name, role=client.role)
            g.client_id = client.id


def _unauthorized(detail: str) -> Problem:
    return Problem(
        401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="idcscan"'}
    )
