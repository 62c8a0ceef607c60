"""The API's access log and request context; the JSON formatter itself is `idcscan.core.logs`.

File names, labels and slide metadata can hold patient names, so no code path passes them to a
logger (a test uploads a canary file name to prove it).
"""

from __future__ import annotations

import logging
import re
import time

from flask import Flask, Response, g, request

from idcscan.core.logs import JsonFormatter, configure

__all__ = ["JsonFormatter", "configure", "context", "init_app"]

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")


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
