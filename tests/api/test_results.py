"""Result routes before a job succeeds, and confusion statistics by model and period.

The results of a real scoring run are fetched in test_end_to_end.py; here the statistics get rows
spread over months, written the way the worker writes them, to check the grouping.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from idcscan.core.db import Client, ConfusionStat, Job, JobStatus, SlideResult, transaction
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


def _finish(
    service: Service, job_id: str, at: datetime, counts: tuple[int, int, int, int], model_id: int
) -> None:
    """Mark a job succeeded with a summary and a confusion matrix, as the worker does."""
    tp, fp, tn, fn = counts
    with transaction(service.db) as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        job.status, job.finished_at, job.model_id = JobStatus.SUCCEEDED.value, at, model_id
        session.add(
            SlideResult(
                job_id=job.id,
                model_id=model_id,
                level=0,
                level_mpp=0.5,
                effective_mpp=4.0,
                tissue_tiles=tp + fp + tn + fn,
                idc_tiles=tp + fp,
                idc_area_mm2=0.1,
                idc_fraction=0.5,
                max_probability=0.9,
                mean_probability=0.5,
                slide_call="idc",
                call_rule="any tile",
                threshold=0.5,
                created_at=at,
            )
        )
        session.add(
            ConfusionStat(
                job_id=job.id,
                client_id=job.client_id,
                model_id=model_id,
                threshold=0.5,
                tp=tp,
                fp=fp,
                tn=tn,
                fn=fn,
                created_at=at,
            )
        )


def test_confusion_statistics_by_model_and_period(service: Service) -> None:
    key = service.add_client("hospital-a")
    other_key = service.add_client("hospital-b")
    second_model = register_model(service.db, "test-2", active=False)
    first = service.model_id
    plan = [
        (datetime(2026, 9, 28, 10, tzinfo=UTC), (5, 1, 10, 2), first),  # Monday of ISO week 40
        (datetime(2026, 10, 1, 9, tzinfo=UTC), (3, 0, 4, 1), first),  # same week, next month
        (datetime(2026, 10, 2, 9, tzinfo=UTC), (1, 1, 1, 1), second_model),
    ]
    for at, counts, model_id in plan:
        _finish(service, service.submit(key, SAMPLE_SVS).json()["id"], at, counts, model_id)
    _finish(
        service,
        service.submit(other_key, SAMPLE_SVS).json()["id"],
        plan[0][0],
        (100, 0, 0, 0),
        first,
    )

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
        client_a = session.scalar(select(Client.id).where(Client.name == "hospital-a"))
        job_a = session.scalar(
            select(Job.id).where(Job.client_id == client_a).order_by(Job.created_at)
        )
    result = service.get(f"/v1/jobs/{job_a}/result", key).json()
    assert result["confusion"]["tp"] == 5
    assert result["model_version"] == "test-1"
    # A result stored without the stain check (as before revision 0005) says so: null, not true.
    assert result["in_distribution"] is None and result["stain_distance"] is None
    tiles = service.get(f"/v1/jobs/{job_a}/tiles", key, params={"format": "csv"})
    assert tiles.text == "row,col,x,y,probability,label\n"  # no tile rows were written here
    missing = service.get(f"/v1/jobs/{job_a}/heatmap.png", key)
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:idcscan:problem:artifact-missing"
