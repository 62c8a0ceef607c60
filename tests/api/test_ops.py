"""Health, readiness, metrics, the OpenAPI document and errors for routes that do not exist."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from openapi_spec_validator import validate

from idcscan.api.schemas import TileOut
from idcscan.core import tilerows
from idcscan.core.db import JobStatus
from idcscan.core.settings import Settings
from idcscan.core.summary import SlideCall, SlideSummary
from tests.conftest import SAMPLE_SVS

from .conftest import KOMBU_NOLOAD, Service

pytestmark = [pytest.mark.integration, KOMBU_NOLOAD]

UNDOCUMENTED = {"/static/<path:filename>", "/openapi.json", "/docs", "/docs/openapi.json"}
BROWSER_PAGES = "viewer."
"""The viewer and the worklist page (and what they load under a signed link): a browser's, not
operations of the API; the worklist's data and the links are."""


def test_health_readiness_and_metrics(service: Service) -> None:
    assert service.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = service.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    service.get("/v1/jobs", service.add_client())
    metrics = service.get("/metrics", service.add_client(admin=True))
    assert metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.text
    assert 'idcscan_jobs{status="queued"} 0.0' in text
    assert "idcscan_queue_depth 0.0" in text
    assert "idcscan_tiles_scored_total 0.0" in text
    assert (
        'idcscan_http_request_duration_seconds_count{method="GET",route="/v1/jobs",status="200"} 1.0'
        in text
    )


def test_readiness_fails_when_the_broker_is_down(serve, service_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    service = serve(service_settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"}))
    ready = service.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["broker"] != "ok"


def _rule_to_openapi(rule: str) -> str:
    return re.sub(r"<(?:[^:>]+:)?([a-z_]+)>", r"{\1}", rule)


def test_the_spec_validates_and_matches_the_routes(service: Service) -> None:
    document: dict[str, Any] = service.get("/openapi.json").json()
    validate(document)  # type: ignore[arg-type]
    from idcscan.api.app import create_app

    app = create_app(service.settings)
    routes = {
        (_rule_to_openapi(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule not in UNDOCUMENTED and not rule.endpoint.startswith(BROWSER_PAGES)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert documented == routes
    submit = document["paths"]["/v1/jobs"]["post"]
    assert set(submit["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert submit["responses"]["415"]["content"].keys() == {"application/problem+json"}
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
    }


def test_metrics_need_an_admin_key(service: Service) -> None:
    """They count every tenant's jobs: an operator's business, not a client's nor the world's."""
    anonymous = service.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.json()["type"] == "urn:idcscan:problem:unauthorized"
    client = service.get("/metrics", service.add_client())
    assert client.status_code == 403
    assert client.json()["type"] == "urn:idcscan:problem:admin-required"
    assert "idcscan_jobs" not in anonymous.text + client.text
    assert service.get("/metrics", service.add_client(admin=True)).status_code == 200


def test_the_docs_page_loads_nothing_from_elsewhere(service: Service) -> None:
    page = service.get("/docs")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<script" not in page.text.lower()
    assert "https://" not in page.text and "http://" not in page.text
    assert page.headers["Content-Security-Policy"] == "default-src 'none'"
    assert 'href="/openapi.json"' in page.text


def test_security_headers(service: Service) -> None:
    key = service.add_client()
    job = service.submit(key, SAMPLE_SVS).json()["id"]
    tenant_data = [
        service.get("/v1/jobs", key),
        service.get(f"/v1/jobs/{job}", key),
        service.get(f"/v1/jobs/{job}/result", key),  # 409: not scored yet; still no-store
        service.get(f"/v1/jobs/{job}/heatmap.png", key),
        service.get(f"/v1/jobs/{job}/tiles", key, params={"format": "csv"}),
        service.post("/v1/clients", service.add_client(admin=True), json={"name": "new"}),
    ]
    for response in tenant_data:
        assert response.headers["Cache-Control"] == "no-store", response.url
    everything = [
        *tenant_data,
        service.get("/healthz"),
        service.get("/openapi.json"),
        service.get("/docs"),
        service.get("/v1/jobs"),  # 401
        service.get("/nowhere"),  # 404
    ]
    for response in everything:
        assert response.headers["X-Content-Type-Options"] == "nosniff", response.url


def test_unknown_routes_and_methods_are_problems(service: Service) -> None:
    key = service.add_client()
    missing = service.get("/v1/nothing", key)
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/problem+json"
    assert missing.json()["type"] == "urn:idcscan:problem:not-found"
    wrong = service.post("/healthz")
    assert wrong.status_code == 405
    assert wrong.json()["type"] == "urn:idcscan:problem:method-not-allowed"
    assert "GET" in wrong.headers["Allow"]
    assert service.get("/v1/jobs/not-a-uuid", key).status_code == 404


def _schema(document: dict[str, Any], path: str, method: str = "get") -> dict[str, Any]:
    """The JSON schema of an operation's 200 answer, its `$ref` followed."""
    content = document["paths"][path][method]["responses"]["200"]["content"]
    ref = content["application/json"]["schema"]["$ref"]
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]]  # type: ignore[no-any-return]


def test_the_result_schema_is_the_summary_dataclass(service: Service) -> None:
    """The API restates no field of `SlideSummary` by hand, and its status names are the enum's."""
    document: dict[str, Any] = service.get("/openapi.json").json()
    result = _schema(document, "/v1/jobs/{job_id}/result")
    envelope = ["job_id", "model_id", "model_version", "model_variant", "confusion", "created_at"]
    summary = {name for name in result["properties"] if name not in envelope}
    assert summary == {field.name for field in dataclasses.fields(SlideSummary)}
    assert set(summary) <= set(result["required"])
    assert tuple(TileOut.model_fields) == tilerows.SCORE_COLUMNS  # the CSV's columns, too
    calls = json.dumps(document["components"]["schemas"])
    assert all(f'"{call.value}"' in calls for call in SlideCall)
    job = _schema(document, "/v1/jobs/{job_id}")
    status = job["properties"]["status"]
    if "$ref" in status:
        status = document["components"]["schemas"][status["$ref"].rsplit("/", 1)[1]]
    assert status["enum"] == [s.value for s in JobStatus]
