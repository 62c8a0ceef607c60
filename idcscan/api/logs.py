"""Structured logs: one JSON object per line, carrying request, client and job ids.

What may reach a log is decided here, not at each call site: the formatter writes the message and
only the whitelisted context fields below. File names, labels and slide metadata can hold patient
names, so no code path passes them to a logger (a test uploads a canary file name to prove it).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from datetime import UTC, datetime

from flask import Flask, Response, g, request

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
CONTEXT_FIELDS = ("request_id", "client_id", "job_id", "method", "route", "status", "duration_ms")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            # The exception type and the frames, not the message: messages of third-party errors
            # (OpenSlide, fsspec) may quote paths.
            entry["error"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            entry["traceback"] = "".join(traceback.format_tb(record.exc_info[2]))
        return json.dumps(entry, default=str)


def configure(level: str) -> None:
    """JSON lines on stderr for the whole process (idempotent)."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:
        if isinstance(handler.formatter, JsonFormatter):
            return
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)


def context() -> dict[str, object]:
    """The ids of the current request, for `extra=` of a log call."""
    return {
        "request_id": g.get("request_id"),
        "client_id": g.get("client_id"),
        "job_id": g.get("job_id"),
    }


access_log = logging.getLogger("idcscan.api.access")


def init_app(app: Flask) -> None:
    """One access line per request: route template (not the raw path), status, latency, ids."""

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        # A caller's request id is kept only when it is an id: it reaches every log line.
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if REQUEST_ID.fullmatch(given) else _new_request_id()

    @app.after_request
    def _access(response: Response) -> Response:
        duration = time.perf_counter() - g.get("started", time.perf_counter())
        g.duration_s = duration
        response.headers["X-Request-Id"] = g.request_id
        access_log.info(
            "request",
            extra={
                **context(),
                "method": request.method,
                "route": request.url_rule.rule if request.url_rule else None,
                "status": response.status_code,
                "duration_ms": round(duration * 1000, 2),
            },
        )
        return response


def _new_request_id() -> str:
    import secrets

    return secrets.token_hex(8)
