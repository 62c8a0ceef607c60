"""Per-client rate limits on shared Redis storage (as in production): 429 with Retry-After."""

from __future__ import annotations

import pytest

from idcscan.core.settings import Settings

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_each_client_has_its_own_limit(serve, service_settings: Settings, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = service_settings.model_copy(
        update={"rate_limit": "3/minute", "rate_limit_storage_url": redis_url}
    )
    # Two API processes behind one Redis share the count, as gunicorn workers do.
    first, second = serve(settings), serve(settings)
    key = first.add_client("busy")
    other = first.add_client("quiet")
    statuses = [s.get("/v1/jobs", key).status_code for s in (first, second, first)]
    assert statuses == [200, 200, 200]
    limited = second.get("/v1/jobs", key)
    assert limited.status_code == 429
    assert limited.headers["Content-Type"] == "application/problem+json"
    assert limited.json()["type"] == "urn:idcscan:problem:rate-limited"
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    assert first.get("/v1/jobs", other).status_code == 200
    # Operations routes are never limited.
    assert all(first.get("/healthz").status_code == 200 for _ in range(5))
