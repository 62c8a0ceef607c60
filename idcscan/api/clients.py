"""Client management over HTTP (admin key): list, create, revoke, rotate. Keys are shown once.

The admin check wraps each view outside its schema validation: a client that may not call a
route learns that (403) before anything about the body it sent (422)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request
from spectree import Response as Resp
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from idcscan.api.auth import (
    add_client,
    admin_required,
    caller,
    revoke_client,
    rotate_key,
    rotate_webhook_secret,
    set_webhook_prefixes,
)
from idcscan.api.jobs import PROBLEMS
from idcscan.api.problems import Problem, accepts, not_found
from idcscan.api.schemas import (
    ID_RULE,
    ClientIn,
    ClientList,
    ClientOut,
    ClientWithKey,
    ProblemOut,
    WebhooksIn,
    WebhooksOut,
    aware,
    spec,
)
from idcscan.core.db import Client, transaction
from idcscan.core.webhooks import CallbackRefused

bp = Blueprint("clients", __name__, url_prefix="/v1")
ADMIN_PROBLEMS = {"HTTP_403": ProblemOut, **PROBLEMS}


def client_out(client: Client) -> dict[str, Any]:
    return {
        "id": client.id,
        "name": client.name,
        "role": client.role,
        "key_prefix": client.key_prefix,
        "created_at": aware(client.created_at),
        "revoked_at": aware(client.revoked_at),
        "webhook_allow": client.webhook_prefixes or [],
    }


@bp.get("/clients")
@admin_required
@spec.validate(resp=Resp(HTTP_200=ClientList, **ADMIN_PROBLEMS), tags=["clients"])
def list_clients() -> Any:
    """Every client (admin key)."""
    with current_app.extensions["idcscan.db"]() as session:
        clients = session.scalars(select(Client).order_by(Client.id))
        return ClientList(clients=[ClientOut(**client_out(c)) for c in clients])


@bp.post("/clients")
@admin_required
@accepts("application/json", detail="Send the new client as JSON.")
@spec.validate(
    json=ClientIn,
    resp=Resp(
        HTTP_201=ClientWithKey,
        HTTP_409=ProblemOut,
        HTTP_413=ProblemOut,
        HTTP_415=ProblemOut,
        **ADMIN_PROBLEMS,
    ),
    tags=["clients"],
)
def create_client() -> Any:
    """Create a client (admin key); the answer holds its key, shown this once."""
    body: ClientIn = request.context.json  # type: ignore[attr-defined]
    try:
        with transaction(current_app.extensions["idcscan.db"]) as session:
            client, key = add_client(session, body.name, body.admin, by=caller().id)
            out = ClientWithKey(**client_out(client), key=key)
    except IntegrityError:
        raise Problem(409, "client-exists", "A client of that name exists.") from None
    return out, 201


def _client(session: Any, client_id: int) -> Client:
    client = session.get(Client, client_id)
    if client is None:
        raise not_found("client")
    return client


@bp.post(f"/clients/<{ID_RULE}:client_id>/revoke")
@admin_required
@spec.validate(resp=Resp(HTTP_200=ClientOut, **ADMIN_PROBLEMS), tags=["clients"])
def revoke(client_id: int) -> Any:
    """Revoke a client's key at once (admin key)."""
    with transaction(current_app.extensions["idcscan.db"]) as session:
        client = _client(session, client_id)
        revoke_client(session, client, by=caller().id)
        return ClientOut(**client_out(client))


@bp.post(f"/clients/<{ID_RULE}:client_id>/rotate")
@admin_required
@spec.validate(resp=Resp(HTTP_200=ClientWithKey, **ADMIN_PROBLEMS), tags=["clients"])
def rotate(client_id: int) -> Any:
    """Give a client a new key (admin key); the old one stops working."""
    with transaction(current_app.extensions["idcscan.db"]) as session:
        client = _client(session, client_id)
        key = rotate_key(session, client, by=caller().id)
        return ClientWithKey(**client_out(client), key=key)


@bp.put(f"/clients/<{ID_RULE}:client_id>/webhooks")
@admin_required
@accepts("application/json", detail="Send the allow-list as JSON.")
@spec.validate(
    json=WebhooksIn,
    resp=Resp(
        HTTP_200=WebhooksOut,
        HTTP_413=ProblemOut,
        HTTP_415=ProblemOut,
        HTTP_422=ProblemOut,
        **ADMIN_PROBLEMS,
    ),
    tags=["clients"],
)
def set_webhooks(client_id: int) -> Any:
    """Set the URL prefixes a client's jobs may name as `callback_url` (admin key); the first
    time, the answer holds the client's webhook signing secret, shown this once."""
    body: WebhooksIn = request.context.json  # type: ignore[attr-defined]
    try:
        with transaction(current_app.extensions["idcscan.db"]) as session:
            client = _client(session, client_id)
            secret = set_webhook_prefixes(session, client, body.allow, by=caller().id)
            return WebhooksOut(
                client_id=client.id, allow=client.webhook_prefixes or [], secret=secret
            )
    except CallbackRefused as refused:
        raise Problem(422, "invalid-webhook-prefix", f"Refused: {refused}.") from None


@bp.post(f"/clients/<{ID_RULE}:client_id>/webhooks/rotate-secret")
@admin_required
@spec.validate(resp=Resp(HTTP_200=WebhooksOut, **ADMIN_PROBLEMS), tags=["clients"])
def rotate_webhook(client_id: int) -> Any:
    """Give a client a new webhook signing secret (admin key), shown this once; every webhook
    sent from now on is signed with it."""
    with transaction(current_app.extensions["idcscan.db"]) as session:
        client = _client(session, client_id)
        secret = rotate_webhook_secret(session, client, by=caller().id)
        return WebhooksOut(client_id=client.id, allow=client.webhook_prefixes or [], secret=secret)
