"""Errors as RFC 9457 problem+json, with a stable `type` per cause that clients can branch on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException

from idcscan.core.errors import InvalidInput

PROBLEM_MIMETYPE = "application/problem+json"
TYPE_PREFIX = "urn:idcscan:problem:"

# HTTP status of each cause of InvalidInput that is not a plain 422.
STATUS_BY_CODE = {
    "upload-too-large": 413,
    "unsupported-format": 415,
}

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


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


def accepts(*media_types: str, detail: str) -> Callable[[F], F]:
    """Refuse (415) a body of any other media type before the view's schema validation: spectree
    validates a JSON body only when it comes as JSON, and would hand the view no body at all."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if request.mimetype not in media_types:
                raise Problem(415, "unsupported-media-type", detail)
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


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
        413: "body-too-large",
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
        log.exception("unhandled error")
        return problem_response(Problem(500, "internal", "Internal error; it has been logged."))
