"""Tells our own infrastructure's outage (database or broker unreachable) from every other error.

An outage is transient and not the job's or the request's fault: the API answers 503 with
`Retry-After`, and a worker leaves the job to be retried without spending an attempt on it. A
bug, bad input or a constraint violation is none of these and keeps its own handling.
"""

from __future__ import annotations

from typing import Literal

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc

Outage = Literal["database", "broker"]

# SQLAlchemy wraps the driver's connection errors (psycopg's OperationalError: refused, reset,
# terminated by the administrator; SQLite's "database is locked") as OperationalError or
# InterfaceError; a pool with no free connection raises its TimeoutError.
_DATABASE = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,
)
# kombu's OperationalError is what Celery raises when publishing fails; redis' own errors reach
# us from flask-limiter's storage and from the broker's client directly.
_BROKER = (
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def unavailable(exc: BaseException) -> Outage | None:
    """ "database" or "broker" when `exc`, or an error it was raised from, is that service being
    unreachable; None for anything else. Only explicit causes (`raise ... from`) count, the way
    SQLAlchemy and kombu wrap a driver's error: an error raised while handling an outage is a
    bug of its own."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _DATABASE) or (
            isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated
        ):
            return "database"
        if isinstance(current, _BROKER):
            return "broker"
        current = current.__cause__
    return None
