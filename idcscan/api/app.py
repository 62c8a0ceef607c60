"""The Flask app factory: settings in, a ready WSGI app out; each extension has its `init_app`."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, g, request
from flask_limiter import HeaderNames, Limiter
from flask_limiter.util import get_remote_address
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from idcscan.api import auth, logs, problems
from idcscan.api.schemas import spec
from idcscan.api.storage import BlobStore
from idcscan.core.db import make_engine, make_sessionmaker
from idcscan.core.settings import Settings, get_settings

MAX_BODY_BYTES = 64 * 1024
"""Every request body but a slide upload: JSON bodies are a few hundred bytes. werkzeug enforces
it on the stream, so a chunked body (no Content-Length) is cut off at the limit too; the upload
route raises it for its own request (`jobs.submit`)."""


def _address_key() -> str:
    return f"addr:{get_remote_address()}"


def _client_key() -> str:
    return f"client:{g.client_id}"


def _unlimited() -> bool:
    """Health checks, the OpenAPI document: probes and load balancers call them freely. Deep
    zoom tiles too: a viewer asks for dozens at each zoom, each behind a signed link whose
    signature is checked before anything else is done."""
    return request.endpoint in auth.PUBLIC_ENDPOINTS or request.endpoint == "viewer.tile"


def _limiter(settings: Settings, key: Callable[[], str], limit: str, counts: str) -> Limiter:
    """A limit of `limit` requests per `key`; `counts` names it in its headers and storage keys."""
    headers = "X-RateLimit-" if counts == "client" else f"X-RateLimit-{counts.title()}-"
    return Limiter(
        key,
        application_limits=[limit],
        storage_uri=settings.rate_limit_storage_url,
        headers_enabled=True,
        # Each limit reports itself; Retry-After is shared and says the later of the two.
        header_name_mapping={
            HeaderNames.LIMIT: headers + "Limit",
            HeaderNames.REMAINING: headers + "Remaining",
            HeaderNames.RESET: headers + "Reset",
        },
        strategy="moving-window",
        key_prefix=f"idcscan-{counts}",
    )


def _security_headers(response: Response) -> Response:
    """nosniff everywhere: a browser must never run a stored heatmap or GeoJSON as something else.
    Everything under /v1 is one tenant's data (slides' results, keys when a client is made):
    no cache, shared or private, may keep it."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    if request.path.startswith("/v1/"):
        response.headers["Cache-Control"] = "no-store"
    return response


def _json_body_within_limit() -> None:
    """Read a JSON body now, refusing one that reaches the limit. werkzeug refuses an announced
    length beyond it, but stops reading a chunked body at the limit and hands back what it read
    as if that were the whole body; a body that fills the limit is taken as one that went on."""
    limit = request.max_content_length
    if request.is_json and limit is not None and len(request.get_data()) >= limit:
        raise RequestEntityTooLarge()


def create_app(settings: Settings | None = None) -> Flask:
    """The API for `settings` (default: the environment). Logging is the process's business:
    `idcscan api` configures JSON logs before it builds the app."""
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        # Flask's own form parser is never used (uploads are streamed by `upload.py`); bounded
        # all the same, should anything ever read `request.form`.
        MAX_FORM_MEMORY_SIZE=MAX_BODY_BYTES,
        MAX_FORM_PARTS=8,
    )

    engine = make_engine(settings.database)
    app.extensions["idcscan.settings"] = settings
    app.extensions["idcscan.engine"] = engine
    app.extensions["idcscan.db"] = make_sessionmaker(engine)
    app.extensions["idcscan.store"] = BlobStore(settings.storage)

    if settings.trusted_proxies:
        # The client address a trusted proxy saw, for the per-address limit.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]

    # Order matters: the request id and timer first; the per-address limit before the key is
    # even looked at (a flood of bad keys is limited), then the caller, then its own limit.
    logs.init_app(app)
    problems.init_app(app)
    by_address = _limiter(settings, _address_key, settings.rate_limit_per_address, "address")
    by_address.request_filter(_unlimited)
    by_address.init_app(app)
    auth.init_app(app)
    by_client = _limiter(settings, _client_key, settings.rate_limit, "client")
    by_client.request_filter(lambda: _unlimited() or g.get("client_id") is None)
    by_client.init_app(app)
    app.extensions["idcscan.limiters"] = (by_address, by_client)
    app.before_request(_json_body_within_limit)
    app.after_request(_security_headers)

    from idcscan.api import clients, jobs, models, ops, results, stats, viewer, worklist

    ops.init_app(app)
    viewer.init_app(app)
    for blueprint in (
        jobs.bp,
        results.bp,
        worklist.bp,
        viewer.links_bp,
        models.bp,
        stats.bp,
        clients.bp,
        ops.bp,
        viewer.bp,
    ):
        app.register_blueprint(blueprint)
    spec.register(app)
    return app
