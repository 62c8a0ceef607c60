"""Result routes before a job succeeds, and confusion statistics by model and period.

The results of a real scoring run are fetched in test_end_to_end.py; here the statistics get rows
spread over months, written the way the worker writes them, to check the grouping.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from idcscan.core.db import Client, Job, JobStatus, Model, SlideResult, transaction
from tests import factories
from tests.conftest import SAMPLE_SVS

from .conftest import KOMBU_NOLOAD, Service, register_model

pytestmark = [pytest.mark.integration, KOMBU_NOLOAD]


def test_results_wait_for_success(service: Service) -> None:
    key = service.add_client()
    job_id = service.submit(key, SAMPLE_SVS).json()["id"]
    for route in ("result", "tiles", "heatmap.png", "annotations.geojson"):
        response = service.get(f"/v1/jobs/{job_id}/{route}", key)
        assert response.status_code == 409, route
        assert response.json()["type"] == "urn:idcscan:problem:job-not-succeeded"
        assert response.json()["job_status"] == "queued"


def _succeeded(
    service: Service, client_id: int, at: datetime, counts: tuple[int, int, int, int], model_id: int
) -> None:
    """A job of the client's that succeeded at `at` with a summary and a confusion matrix."""
    with transaction(service.db) as session:
        owner, model = session.get(Client, client_id), session.get(Model, model_id)
        assert owner is not None and model is not None
        job = factories.job(session, owner, model, JobStatus.SUCCEEDED, finished_at=at)
        factories.results(session, job, counts, created_at=at)


def test_confusion_statistics_by_model_and_period(service: Service) -> None:
    client_a, key = service.new_client("hospital-a")
    client_b, _other_key = service.new_client("hospital-b")
    second_model = register_model(service.db, "test-2", active=False)
    first = service.model_id
    plan = [
        (datetime(2026, 9, 28, 10, tzinfo=UTC), (5, 1, 10, 2), first),  # Monday of ISO week 40
        (datetime(2026, 10, 1, 9, tzinfo=UTC), (3, 0, 4, 1), first),  # same week, next month
        (datetime(2026, 10, 2, 9, tzinfo=UTC), (1, 1, 1, 1), second_model),
    ]
    for at, counts, model_id in plan:
        _succeeded(service, client_a, at, counts, model_id)
    _succeeded(service, client_b, plan[0][0], (100, 0, 0, 0), first)

    monthly = service.get("/v1/stats/confusion", key, params={"period": "month"}).json()
    assert [(b["model_id"], b["period_start"][:10], b["jobs"]) for b in monthly["buckets"]] == [
        (first, "2026-09-01", 1),
        (first, "2026-10-01", 1),
        (second_model, "2026-10-01", 1),
    ]
    weekly = service.get(
        "/v1/stats/confusion", key, params={"period": "week", "model_id": first}
    ).json()
    assert len(weekly["buckets"]) == 1
    week = weekly["buckets"][0]
    assert week["period_start"].startswith("2026-09-28")
    assert week["jobs"] == 2
    assert {k: week["confusion"][k] for k in ("tp", "fp", "tn", "fn", "missed_idc")} == {
        "tp": 8,
        "fp": 1,
        "tn": 14,
        "fn": 3,
        "missed_idc": 3,
    }
    since = service.get(
        "/v1/stats/confusion", key, params={"period": "day", "since": "2026-10-02T00:00:00Z"}
    )
    assert [b["model_id"] for b in since.json()["buckets"]] == [second_model]

    # Results are readable now, and the other tenant's matrix never mixes in.
    with service.db() as session:
        job_a = session.scalar(
            select(Job.id).where(Job.client_id == client_a).order_by(Job.created_at)
        )
        # As a result stored before revision 0005 (no stain check) is.
        stored = session.get_one(SlideResult, job_a)
        stored.in_distribution, stored.stain_distance = None, None
        stored.model_variant = None  # nor which precision scored it (before revision 0006)
        session.commit()
    result = service.get(f"/v1/jobs/{job_a}/result", key).json()
    assert result["confusion"]["tp"] == 5
    assert result["model_version"] == "test-1"
    assert result["model_variant"] == "fp32"  # the only precision there was before 0006
    # A result stored without the stain check (as before revision 0005) says so: null, not true.
    assert result["in_distribution"] is None and result["stain_distance"] is None
    tiles = service.get(f"/v1/jobs/{job_a}/tiles", key, params={"format": "csv"})
    assert tiles.text == "row,col,x,y,probability,label\n"  # no tile rows were written here
    missing = service.get(f"/v1/jobs/{job_a}/heatmap.png", key)
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:idcscan:problem:artifact-missing"
