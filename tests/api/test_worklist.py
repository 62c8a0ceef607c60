"""The worklist route: the caller's jobs by suspicion, filtered by date and status, with progress
for running jobs and viewer links for succeeded ones, in the OpenAPI document.

Jobs are submitted over HTTP; their results are written the way the worker writes them (one
`slide_results` row, a confusion row when labelled), so that every order can be set up exactly.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from idcscan.core.db import ConfusionStat, Job, JobStatus, SlideResult, transaction
from tests.conftest import SAMPLE_SVS

from .conftest import KOMBU_NOLOAD, Service

pytestmark = [pytest.mark.integration, KOMBU_NOLOAD]


def _job(service: Service, key: str, created: datetime, **summary: object) -> str:
    """A submitted job created at `created`; with `summary` (slide_call, idc_area_mm2,
    max_probability[, fn]) succeeded with that result, else left queued."""
    job_id = str(
        service.submit(key, SAMPLE_SVS, headers={"Idempotency-Key": uuid.uuid4().hex}).json()["id"]
    )
    fn = summary.pop("fn", None)
    with transaction(service.db) as session:
        job = session.get_one(Job, uuid.UUID(job_id))
        job.created_at = created
        if summary.pop("running", False):
            job.status, job.tiles_done, job.tiles_total = JobStatus.RUNNING.value, 30, 120
        if not summary:
            return job_id
        job.status, job.finished_at = JobStatus.SUCCEEDED.value, created
        session.add(
            SlideResult(
                job_id=job.id,
                model_id=service.model_id,
                level=0,
                level_mpp=0.5,
                effective_mpp=4.0,
                tissue_tiles=100,
                idc_tiles=10,
                idc_fraction=0.1,
                mean_probability=0.2,
                call_rule="rule",
                threshold=0.5,
                **summary,
            )
        )
        if fn is not None:
            session.add(
                ConfusionStat(
                    job_id=job.id,
                    client_id=job.client_id,
                    model_id=service.model_id,
                    threshold=0.5,
                    tp=5,
                    fp=1,
                    tn=90,
                    fn=fn,
                )
            )
    return job_id


def _ids(service: Service, key: str, **params: str) -> list[str]:
    response = service.get("/v1/worklist", key, params=params)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["rank"] for item in items] == list(range(1, len(items) + 1))
    return [item["job"]["id"] for item in items]


def test_the_worklist_ranks_by_suspicion(service: Service) -> None:
    key = service.add_client()
    now = datetime.now(UTC)
    small_idc = _job(
        service, key, now, slide_call="idc", idc_area_mm2=0.5, max_probability=0.99, fn=2
    )
    large_idc = _job(
        service,
        key,
        now - timedelta(hours=1),
        slide_call="idc",
        idc_area_mm2=3.0,
        max_probability=0.9,
    )
    negative = _job(service, key, now, slide_call="no_idc", idc_area_mm2=0.01, max_probability=0.6)
    empty = _job(service, key, now, slide_call="no_tissue", idc_area_mm2=0.0, max_probability=None)
    # Stained unlike the training data: the model cannot judge it, a pathologist reads it next.
    unlike = _job(
        service,
        key,
        now,
        slide_call="indeterminate",
        idc_area_mm2=0.0,
        max_probability=0.4,
        in_distribution=False,
        ood_reason="stain distance 4.2 over 4.0",
    )
    running = _job(service, key, now - timedelta(minutes=5), running=True)
    queued = _job(service, key, now)
    service.add_client()  # another client's jobs never show
    other = service.add_client()
    _job(service, other, now, slide_call="idc", idc_area_mm2=9.0, max_probability=1.0)

    assert _ids(service, key) == [large_idc, small_idc, unlike, negative, empty, queued, running]
    assert _ids(service, key, sort="max_probability")[:3] == [small_idc, large_idc, negative]
    assert _ids(service, key, sort="idc_area")[:2] == [large_idc, small_idc]
    assert _ids(service, key, sort="newest")[-1] == large_idc

    items = {i["job"]["id"]: i for i in service.get("/v1/worklist", key).json()["items"]}
    assert items[small_idc]["summary"]["missed_idc"] == 2
    assert items[unlike]["summary"]["in_distribution"] is False
    assert items[unlike]["summary"]["ood_reason"] == "stain distance 4.2 over 4.0"
    assert items[large_idc]["summary"]["missed_idc"] is None
    assert items[running]["summary"] is None and items[running]["viewer_url"] is None
    assert items[running]["job"]["progress"] == {
        "tiles_done": 30,
        "tiles_total": 120,
        "fraction": 0.25,
    }
    link = items[large_idc]["viewer_url"]
    assert link.startswith("/view/")
    assert service.get(link + "job.json").json()["job"]["id"] == large_idc


def test_the_worklist_filters_by_date_and_status(service: Service) -> None:
    key = service.add_client()
    now = datetime.now(UTC)
    yesterday = _job(
        service,
        key,
        now - timedelta(days=1),
        slide_call="idc",
        idc_area_mm2=5.0,
        max_probability=1.0,
    )
    today = _job(service, key, now, slide_call="no_idc", idc_area_mm2=0.0, max_probability=0.3)
    queued = _job(service, key, now)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if now - midnight < timedelta(minutes=1):
        pytest.skip("too close to midnight UTC for a day filter")

    assert _ids(service, key, since=midnight.isoformat()) == [today, queued]
    assert _ids(service, key, until=midnight.isoformat()) == [yesterday]
    assert _ids(service, key, status="queued") == [queued]
    # A day given in another offset means the same instant.
    local = midnight.astimezone(timezone(timedelta(hours=2)))
    assert _ids(service, key, since=local.isoformat()) == [today, queued]
    assert _ids(service, key, limit="1") == [yesterday]


@pytest.mark.parametrize(
    "params",
    [{"sort": "random"}, {"since": "yesterday"}, {"limit": "0"}, {"status": "lost"}],
)
def test_bad_worklist_queries_are_refused(service: Service, params: dict[str, str]) -> None:
    key = service.add_client()
    response = service.get("/v1/worklist", key, params=params)
    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/problem+json"
    assert service.get("/v1/worklist", params=params).status_code == 401


def test_the_worklist_is_in_the_openapi_document(service: Service) -> None:
    document = service.get("/openapi.json").json()
    operation = document["paths"]["/v1/worklist"]["get"]
    names = {p["name"] for p in operation["parameters"]}
    assert {"status", "since", "until", "sort", "limit"} <= names
    assert "/v1/jobs/{job_id}/viewer-link" in document["paths"]
