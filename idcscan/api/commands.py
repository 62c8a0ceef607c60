"""Subcommands of the API: `api` (serve with gunicorn), `clients add|list|revoke|rotate|webhooks|
webhook-secret`.

Light on purpose: Flask, gunicorn and SQLAlchemy are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def register(subparsers: Any) -> None:
    api = subparsers.add_parser(
        "api", help="serve the HTTP API with gunicorn (production WSGI server)"
    )
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes; 0 means 2 x CPUs + 1, at most 8 (1 when rate limits can only be "
        "counted in memory: no redis:// rate-limit storage or broker)",
    )
    api.add_argument("--threads", type=int, default=4, help="threads per process")
    api.set_defaults(func=_serve)

    clients = subparsers.add_parser("clients", help="manage API clients and their keys")
    sub = clients.add_subparsers(dest="clients_command", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="create a client; prints its new key alone on the last line")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may activate models and manage clients")
    add.set_defaults(func=_clients_add)
    listing = sub.add_parser("list", help="list clients (never their keys)")
    listing.set_defaults(func=_clients_list)
    revoke = sub.add_parser("revoke", help="revoke a client's key at once")
    revoke.add_argument("name")
    revoke.set_defaults(func=_clients_revoke)
    rotate = sub.add_parser(
        "rotate", help="give a client a new key; prints it alone on the last line"
    )
    rotate.add_argument("name")
    rotate.set_defaults(func=_clients_rotate)
    hooks = sub.add_parser(
        "webhooks",
        help="set the URL prefixes a client's jobs may name as callback_url (none: no callback); "
        "the first time, prints the client's new webhook secret alone on the last line",
    )
    hooks.add_argument("name")
    hooks.add_argument("prefixes", nargs="*", metavar="PREFIX", help="e.g. https://ris.example/")
    hooks.set_defaults(func=_clients_webhooks)
    secret = sub.add_parser(
        "webhook-secret",
        help="give a client a new webhook signing secret; prints it alone on the last line",
    )
    secret.add_argument("name")
    secret.set_defaults(func=_clients_webhook_secret)


@contextmanager
def _transaction() -> Iterator[Any]:
    """One transaction on the configured database; the engine is closed afterwards."""
    from idcscan.core.db import make_engine, make_sessionmaker, transaction
    from idcscan.core.settings import get_settings

    engine = make_engine(get_settings().database)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            yield session
    finally:
        engine.dispose()


def _named(session: Any, name: str) -> Any:
    from sqlalchemy import select

    from idcscan.core.db import Client

    client = session.scalar(select(Client).where(Client.name == name))
    if client is None:
        raise ValueError(f"no client named {name!r}")
    return client


def _clients_add(args: argparse.Namespace) -> int:
    from pydantic import ValidationError
    from sqlalchemy.exc import IntegrityError

    from idcscan.api.auth import add_client
    from idcscan.api.schemas import ClientIn

    try:  # the names the API takes (`POST /v1/clients`), no others
        ClientIn(name=args.name, admin=args.admin)
    except ValidationError:
        raise ValueError(
            "a client name is 1 to 200 characters, none of them a control character"
        ) from None
    try:
        with _transaction() as session:
            client, key = add_client(session, args.name, args.admin)
    except IntegrityError:
        raise ValueError(f"a client named {args.name!r} exists") from None
    print(f"client {client.id} {client.name!r} ({client.role}) created; its key, shown this once:")
    print(key)
    return 0


def _clients_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from idcscan.core.db import Client

    with _transaction() as session:
        for client in session.scalars(select(Client).order_by(Client.id)):
            state = f"revoked {client.revoked_at:%Y-%m-%d}" if client.revoked_at else "active"
            hooks = " ".join(client.webhook_prefixes or []) or "-"
            print(
                f"{client.id}\t{client.name}\t{client.role}\t{client.key_prefix}\t{state}\t{hooks}"
            )
    return 0


def _clients_revoke(args: argparse.Namespace) -> int:
    from idcscan.api.auth import revoke_client

    with _transaction() as session:
        revoke_client(session, _named(session, args.name))
    print(f"client {args.name!r} revoked")
    return 0


def _clients_rotate(args: argparse.Namespace) -> int:
    from idcscan.api.auth import rotate_key

    with _transaction() as session:
        key = rotate_key(session, _named(session, args.name))
    print(f"client {args.name!r} has a new key (the old one no longer works), shown this once:")
    print(key)
    return 0


def _clients_webhooks(args: argparse.Namespace) -> int:
    from idcscan.api.auth import set_webhook_prefixes
    from idcscan.core.webhooks import CallbackRefused

    try:
        with _transaction() as session:
            secret = set_webhook_prefixes(session, _named(session, args.name), args.prefixes)
    except CallbackRefused as refused:
        raise ValueError(str(refused)) from None
    print(f"client {args.name!r} may name callbacks under {len(args.prefixes)} prefixes")
    if secret is not None:
        print("its webhook signing secret, shown this once:")
        print(secret)
    return 0


def _clients_webhook_secret(args: argparse.Namespace) -> int:
    from idcscan.api.auth import rotate_webhook_secret

    with _transaction() as session:
        secret = rotate_webhook_secret(session, _named(session, args.name))
    print(f"client {args.name!r} has a new webhook secret (the old one no longer signs):")
    print(secret)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import tempfile

    # Before prometheus_client is imported anywhere: its value class is chosen at import.
    metrics_dir = tempfile.mkdtemp(prefix="idcscan-metrics-")
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
    from idcscan.api.server import serve

    return serve(args.host, args.port, args.workers, args.threads)
