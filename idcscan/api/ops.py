"""Operations routes: liveness, readiness, Prometheus metrics, the OpenAPI document and its page.

Job counts, queue depth and tiles scored are read from the database at scrape time (the source of
truth, right whichever process did the work); request latency is a histogram per process, merged
across gunicorn workers by prometheus-client's multiprocess mode when `idcscan api` runs them.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from spectree import Response as Resp
from sqlalchemy import func, select, text

from idcscan.api.auth import admin_required
from idcscan.api.problems import PROBLEM_MIMETYPE
from idcscan.api.schemas import Health, ProblemOut, SlideUpload, spec
from idcscan.broker import ping_broker
from idcscan.core.db import Job, JobStatus

bp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)


class JobCollector(Collector):
    """Jobs by status, queue depth and tiles scored, counted in the database at each scrape."""

    def __init__(self, sessions: Any) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            counts = dict(
                session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            )
            tiles = session.scalar(select(func.coalesce(func.sum(Job.tiles_done), 0)))
        jobs = GaugeMetricFamily("idcscan_jobs", "Jobs by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        yield GaugeMetricFamily(
            "idcscan_queue_depth",
            "Jobs committed and waiting for a worker.",
            value=counts.get(JobStatus.QUEUED.value, 0),
        )
        yield CounterMetricFamily(
            "idcscan_tiles_scored", "Tiles scored by the workers.", value=tiles
        )


def init_app(app: Flask) -> None:
    multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    registry = CollectorRegistry()
    if multiprocess:
        from prometheus_client import multiprocess as mp

        mp.MultiProcessCollector(registry)
    registry.register(JobCollector(app.extensions["idcscan.db"]))
    latency = Histogram(
        "idcscan_http_request_duration_seconds",
        "Latency of HTTP requests by route.",
        ["method", "route", "status"],
        # In multiprocess mode the values live in files the collector above reads.
        registry=None if multiprocess else registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
    )
    app.extensions["idcscan.metrics"] = registry

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        if request.url_rule is not None and "metrics_started" in g:
            latency.labels(
                request.method, request.url_rule.rule, str(response.status_code)
            ).observe(time.perf_counter() - g.metrics_started)
        return response


@bp.get("/healthz")
@spec.validate(resp=Resp(HTTP_200=Health), tags=["operations"], security={})
def healthz() -> Any:
    """The process is up."""
    return Health(status="ok")


@bp.get("/readyz")
@spec.validate(resp=Resp(HTTP_200=Health, HTTP_503=Health), tags=["operations"], security={})
def readyz() -> Any:
    """The database and the broker are reachable."""
    # "unavailable", never the driver's exception (its class or text names the library and
    # often the host); the reason is logged for operators.
    checks = {}
    try:
        with current_app.extensions["idcscan.engine"].connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:
        log.warning("readiness: database unreachable", exc_info=True)
        checks["database"] = "unavailable"
    try:
        ping_broker(current_app.extensions["idcscan.settings"])
        checks["broker"] = "ok"
    except Exception:
        log.warning("readiness: broker unreachable", exc_info=True)
        checks["broker"] = "unavailable"
    ready = all(value == "ok" for value in checks.values())
    return Health(status="ok" if ready else "unavailable", checks=checks), 200 if ready else 503


@bp.get("/metrics")
@admin_required
@spec.validate(
    resp=Resp("HTTP_200", HTTP_401=ProblemOut, HTTP_403=ProblemOut, HTTP_429=ProblemOut),
    tags=["operations"],
)
def metrics() -> Response:
    """Prometheus metrics (admin key): they count every tenant's jobs. Behind a key rather than
    on a port of their own: one listener to secure, and Prometheus sends a bearer key."""
    return Response(
        generate_latest(current_app.extensions["idcscan.metrics"]), mimetype=CONTENT_TYPE_LATEST
    )


def openapi_document() -> dict[str, Any]:
    """spectree's document, plus the multipart form of `POST /v1/jobs`, which is parsed as a
    stream and so is not declared to spectree (it would parse the form itself)."""
    document = copy.deepcopy(spec.spec)
    schema = SlideUpload.model_json_schema(ref_template="#/components/schemas/{model}")
    for field in ("slide", "labels"):
        schema["properties"][field] = {"type": "string", "format": "binary"}
    document["components"]["schemas"]["SlideUpload"] = schema
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]
    body["content"]["multipart/form-data"] = {
        "schema": {"$ref": "#/components/schemas/SlideUpload"}
    }
    # Every error is problem+json (spectree knows only application/json).
    for operations in document["paths"].values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[0] in "45" and "Problem" in str(content.get("application/json")):
                    response["content"] = {
                        PROBLEM_MIMETYPE: response["content"]["application/json"]
                    }
    return document


@bp.get("/openapi.json")
def openapi() -> Any:
    """The OpenAPI 3.1 document of this API."""
    return openapi_document()


# No script viewer: the former page ran ReDoc's latest bundle from a CDN, code that no release
# of idcscan pinned or reviewed, on the service's own origin. The document is the documentation;
# any OpenAPI viewer (Swagger Editor, Redocly, an IDE) renders it on the reader's side.
DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>idcscan API</title></head>
<body><h1>idcscan API</h1>
<p>The <a href="/openapi.json">OpenAPI 3.1 document</a> describes every route, its parameters,
its answers and its errors (<code>application/problem+json</code>). Open it in any OpenAPI
viewer. Every <code>/v1</code> route takes <code>Authorization: Bearer &lt;key&gt;</code>.</p>
</body></html>"""


@bp.get("/docs")
def docs() -> Response:
    """A plain page pointing at /openapi.json: no scripts, nothing loaded from elsewhere."""
    response = Response(DOCS_PAGE, mimetype="text/html")
    response.headers["Content-Security-Policy"] = "default-src 'none'"
    return response
