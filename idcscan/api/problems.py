"""Errors as RFC 9457 problem+json, with a stable `type` per cause that clients can branch on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from http import HTTPStatus
from typing import Any, TypeVar, cast

from flask import Flask, Response, json, request
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

# What a client reads for each cause of InvalidInput. The exception's own message stays on the
# server: it is written for the command line and often quotes a library (Pillow, json, OpenSlide),
# a path in storage, or the client's own bytes back. A cause missing here gets the generic text.
INVALID_INPUT_TEXT = {
    "invalid-input": "The input cannot be processed.",
    "upload-too-large": "The upload is larger than this service accepts.",
    "unsupported-format": "Not a slide or image idcscan reads (OpenSlide formats, PNG, JPEG, "
    "TIFF, or a folder or zip of dataset patches).",
    "truncated-slide": "The slide is corrupt or truncated.",
    "slide-too-large": "The slide has more pixels than this service accepts.",
    "empty-slide": "The slide has no pixels.",
    "no-pixel-size": "The slide records no pixel size; give the job's `mpp` (micrometres per "
    "pixel).",
    "bad-pixel-size": "The pixel size must be a positive number of micrometres per pixel.",
    "resolution-too-low": "The slide's pixels are coarser than the model's scale; it cannot be "
    "scored without inventing detail.",
    "unsafe-archive": "The archive holds a link or a path outside its own folder.",
    "bad-labels": "The labels are neither a GeoJSON FeatureCollection nor a tile-label CSV "
    "(label and x,y or row,col) that idcscan reads.",
    "slide-not-found": "The slide_uri names no file.",
    "missing-slide": "The job's slide is no longer in storage.",
    "missing-labels": "The job's labels are no longer in storage.",
}

# A failed job's error as clients read it, by kind; for invalid input, by cause.
JOB_ERROR_TEXT = {
    "timeout": "Scoring took longer than the task time limit.",
    "worker_lost": "The worker scoring this slide was lost too many times.",
    "internal": "Internal error; it has been logged.",
}


def invalid_input_text(code: str) -> str:
    return INVALID_INPUT_TEXT.get(code, INVALID_INPUT_TEXT["invalid-input"])


def job_error_text(kind: str, stored: str | None) -> str:
    """The fixed text of a job's error. The worker stores `<cause>: <its message>` for invalid
    input, which operators read in the database; the client gets the cause and its fixed text."""
    if kind == "invalid_input":
        code = (stored or "").partition(":")[0].strip()
        code = code if code in INVALID_INPUT_TEXT else "invalid-input"
        return f"{code}: {invalid_input_text(code)}"
    return JOB_ERROR_TEXT.get(kind, JOB_ERROR_TEXT["internal"])


# What a client reads for an error werkzeug or an extension raised (their descriptions may carry
# library text, e.g. a JSON decoder's message).
HTTP_TEXT = {
    400: "The request is malformed.",
    404: "No such resource.",
    405: "This route does not accept that method.",
    413: "The request body is larger than this route accepts.",
    415: "This route does not accept that media type.",
    429: "Too many requests; retry after the time in Retry-After.",
}

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

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
        status = STATUS_BY_CODE.get(exc.code, 422)
        return problem_response(Problem(status, exc.code, invalid_input_text(exc.code)))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        headers = dict(exc.get_headers()) if exc.code == 405 else {}
        headers.pop("Content-Type", None)
        status = exc.code or 500
        detail = HTTP_TEXT.get(status, HTTPStatus(status).phrase + ".")
        return problem_response(Problem(status, _http_code(exc), detail, headers=headers))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        what = unavailable(exc)
        if what is not None:
            return _outage(what, exc)
        log.exception("unhandled error")
        return problem_response(Problem(500, "internal", "Internal error; it has been logged."))
