"""Errors as RFC 9457 problem+json, with a stable `type` per cause that clients can branch on."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException

from idcscan.core.errors import InvalidInput
from idcscan.core.outage import Outage, unavailable

PROBLEM_MIMETYPE = "application/problem+json"
TYPE_PREFIX = "urn:idcscan:problem:"

# HTTP status of each cause of InvalidInput that is not a plain 422.
STATUS_BY_CODE = {
    "upload-too-large": 413,
    "unsupported-format": 415,
    "unsupported-slide-format": 415,
}

log = logging.getLogger(__name__)

# Seconds a client is told to wait when the database or broker is down: about one reconnect.
RETRY_AFTER_S = 5


def _outage(what: Outage, exc: Exception) -> Response:
    """Our own outage, not the request's fault: one line per request, no traceback (the
    database's or broker's own log says why), and a 503 that says when to come back."""
    log.warning(f"{what} unavailable", extra={"error": exc.__class__.__name__})
    return problem_response(
        Problem(
            503,
            f"{what}-unavailable",
            f"The {what} is unavailable; retry later.",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    )


class Problem(Exception):
    """An error answered as problem+json. `code` is the stable last part of the `type` URI."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions


def not_found(what: str = "job") -> Problem:
    return Problem(404, "not-found", f"No such {what}.")


def problem_response(problem: Problem) -> Response:
    from http import HTTPStatus

    body = {
        "type": TYPE_PREFIX + problem.code,
        "title": HTTPStatus(problem.status).phrase,
        "status": problem.status,
        "detail": problem.detail,
        **problem.extensions,
    }
    response = Response(json.dumps(body), problem.status, mimetype=PROBLEM_MIMETYPE)
    response.headers.update(problem.headers)
    return response


def _http_code(exc: HTTPException) -> str:
    return {
        404: "not-found",
        405: "method-not-allowed",
        413: "upload-too-large",
        429: "rate-limited",
    }.get(exc.code or 500, (exc.name or "error").lower().replace(" ", "-"))


def init_app(app: Flask) -> None:
    """Every error the app answers, whatever raised it, becomes problem+json."""

    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        return problem_response(exc)

    @app.errorhandler(InvalidInput)
    def _invalid_input(exc: InvalidInput) -> Response:
        return problem_response(Problem(STATUS_BY_CODE.get(exc.code, 422), exc.code, str(exc)))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        headers = dict(exc.get_headers()) if exc.code == 405 else {}
        headers.pop("Content-Type", None)
        detail = exc.description or exc.name
        return problem_response(Problem(exc.code or 500, _http_code(exc), detail, headers=headers))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        what = unavailable(exc)
        if what is not None:
            return _outage(what, exc)
        log.exception("unhandled error")
        return problem_response(Problem(500, "internal", "Internal error; it has been logged."))
