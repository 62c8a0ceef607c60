"""The Flask app factory: settings in, a ready WSGI app out; each extension has its `init_app`."""

from __future__ import annotations

from flask import Flask, Response, g, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from werkzeug.exceptions import RequestEntityTooLarge

from idcscan.api import auth, logs, problems
from idcscan.api.schemas import spec
from idcscan.api.storage import BlobStore
from idcscan.core.db import make_engine, make_sessionmaker
from idcscan.core.settings import Settings, get_settings


def _rate_key() -> str:
    """Limits count per client; a request that has no client yet counts per address."""
    client_id = g.get("client_id")
    return f"client:{client_id}" if client_id is not None else f"addr:{get_remote_address()}"


MAX_BODY_BYTES = 64 * 1024
"""Every request body but a slide upload: JSON bodies are a few hundred bytes. werkzeug enforces
it on the stream, so a chunked body (no Content-Length) is cut off at the limit too; the upload
route raises it for its own request (`jobs.submit`)."""


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

    # Order matters: the request id and timer first, then the caller, then the limit keyed by it.
    logs.init_app(app)
    problems.init_app(app)
    auth.init_app(app)
    limiter = Limiter(
        _rate_key,
        application_limits=[settings.rate_limit],
        storage_uri=settings.rate_limit_storage_url,
        headers_enabled=True,
        strategy="moving-window",
    )
    limiter.request_filter(lambda: request.endpoint in auth.PUBLIC_ENDPOINTS)
    limiter.init_app(app)
    app.extensions["idcscan.limiter"] = limiter
    app.before_request(_json_body_within_limit)
    app.after_request(_security_headers)

    from idcscan.api import clients, jobs, models, ops, results, stats

    ops.init_app(app)
    for blueprint in (jobs.bp, results.bp, models.bp, stats.bp, clients.bp, ops.bp):
        app.register_blueprint(blueprint)
    spec.register(app)
    return app
