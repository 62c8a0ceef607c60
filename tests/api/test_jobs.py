"""Submitting, polling, listing and cancelling jobs through a real HTTP server."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select, update

from idcscan.core.db import AuditEvent, Job
from tests.conftest import SAMPLE_SVS

from .conftest import KOMBU_NOLOAD, Service, plain_tiff
from .test_tenancy import tenant

pytestmark = [pytest.mark.integration, KOMBU_NOLOAD]


def test_submit_poll_and_list(service: Service) -> None:
    key = service.add_client()
    response = service.submit(key, SAMPLE_SVS, data={"mpp": "0.5"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["slide_format"] == "aperio"
    assert job["mpp"] == 0.5
    assert job["model_id"] == service.model_id
    import hashlib

    assert job["slide_sha256"] == hashlib.sha256(SAMPLE_SVS.read_bytes()).hexdigest()

    polled = service.get(response.headers["Location"], key)
    assert polled.status_code == 200
    assert polled.json()["id"] == job["id"]
    assert polled.json()["progress"] == {"tiles_done": 0, "tiles_total": None, "fraction": None}

    listed = service.get("/v1/jobs", key).json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    assert listed["next_cursor"] is None

    with service.db() as session:
        row = session.get(Job, uuid.UUID(job["id"]))
        assert row is not None
        assert Path(row.slide_uri).read_bytes() == SAMPLE_SVS.read_bytes()
        actions = session.scalars(select(AuditEvent.action)).all()
    assert "job.submit" in actions
    # Committed, then published: the task message carries the job id.
    queued = service.published()
    assert len(queued) == 1
    assert job["id"].encode() in queued[0]


def test_a_chunked_upload_is_accepted(service: Service) -> None:
    head = b'--b\r\nContent-Disposition: form-data; name="slide"; filename="s.svs"\r\n\r\n'
    slide = SAMPLE_SVS.read_bytes()
    pieces = [head, *(slide[i : i + 100_000] for i in range(0, len(slide), 100_000))]
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    response = service.post(
        "/v1/jobs", service.add_client(), data=iter([*pieces, b"\r\n--b--\r\n"]), headers=headers
    )
    assert response.status_code == 202, response.text
    import hashlib

    assert response.json()["slide_sha256"] == hashlib.sha256(slide).hexdigest()


def test_the_same_slide_is_stored_once(service: Service) -> None:
    key = service.add_client()
    first = service.submit(key, SAMPLE_SVS, name="a.svs").json()
    second = service.submit(key, SAMPLE_SVS, name="b.svs").json()
    assert first["id"] != second["id"]
    assert first["slide_sha256"] == second["slide_sha256"]
    assert len(service.stored_files()) == 1


def test_idempotent_retry_returns_the_same_job(service: Service) -> None:
    key = service.add_client()
    headers = {"Idempotency-Key": "order-42"}
    first = service.submit(key, SAMPLE_SVS, headers=headers)
    again = service.submit(key, SAMPLE_SVS, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    # The key is the client's own: another client using it gets its own job.
    other = service.submit(service.add_client(), SAMPLE_SVS, headers=headers)
    assert other.json()["id"] != first.json()["id"]
    assert service.job_count() == 2


def test_an_idempotency_key_reused_for_another_request_is_422(
    service: Service, tmp_path: Path
) -> None:
    """The key names one request: a different one under it is a client bug, not a retry."""
    key = service.add_client()
    headers = {"Idempotency-Key": "order-43"}
    first = service.submit(key, SAMPLE_SVS, headers=headers, data={"mpp": "0.5"})
    assert first.status_code == 202, first.text
    stored = service.stored_files()
    other_slide = plain_tiff(tmp_path / "other.tiff", mpp=4.0)
    for response in (
        service.submit(key, SAMPLE_SVS, headers=headers, data={"mpp": "0.25"}),
        service.submit(key, SAMPLE_SVS, headers=headers),
        service.submit(key, other_slide, name="other.tiff", headers=headers),
        service.submit(
            key,
            SAMPLE_SVS,
            headers=headers,
            data={"mpp": "0.5"},
            files={"labels": ("l.csv", b"x,y,label\n")},
        ),
    ):
        assert response.status_code == 422, response.text
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.json()["type"] == "urn:idcscan:problem:idempotency-key-reused"
        assert service.job_count() == 1
        assert service.stored_files() == stored
    # The same request under the key is still a retry.
    again = service.submit(key, SAMPLE_SVS, headers=headers, data={"mpp": "0.50"})
    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert len(service.published()) == 1


def test_an_idempotency_key_names_one_slide_uri(service: Service) -> None:
    key, root = tenant(service)
    for name in ("a.tiff", "b.tiff"):
        plain_tiff(root / name, mpp=4.0)
    headers = {"Idempotency-Key": "by-uri"}
    first = service.post("/v1/jobs", key, json={"slide_uri": "a.tiff"}, headers=headers)
    assert first.status_code == 202, first.text
    reused = service.post("/v1/jobs", key, json={"slide_uri": "b.tiff"}, headers=headers)
    assert reused.status_code == 422
    assert reused.json()["type"] == "urn:idcscan:problem:idempotency-key-reused"
    again = service.post("/v1/jobs", key, json={"slide_uri": "a.tiff"}, headers=headers)
    assert again.json()["id"] == first.json()["id"]
    assert service.job_count() == 1
    # A job from before fingerprints were stored (revision 0002) is replayed as it always was.
    with service.db() as session, session.begin():
        session.execute(update(Job).values(request_sha256=None))
    legacy = service.post("/v1/jobs", key, json={"slide_uri": "b.tiff"}, headers=headers)
    assert legacy.json()["id"] == first.json()["id"]
    assert service.job_count() == 1


def test_twenty_concurrent_retries_make_one_job(service: Service) -> None:
    key = service.add_client()
    headers = {"Idempotency-Key": "race-1"}
    with ThreadPoolExecutor(20) as pool:
        responses = list(
            pool.map(lambda _: service.submit(key, SAMPLE_SVS, headers=headers), range(20))
        )
    assert {r.status_code for r in responses} == {202}, [
        r.text for r in responses if r.status_code != 202
    ]
    assert len({r.json()["id"] for r in responses}) == 1
    assert service.job_count() == 1
    assert len(service.stored_files()) == 1
    assert len(service.published()) == 1


def test_listing_pages_with_a_cursor_and_filters_by_status(service: Service) -> None:
    key = service.add_client()
    ids = [service.submit(key, SAMPLE_SVS).json()["id"] for _ in range(5)]
    cancelled = ids[1]
    assert service.post(f"/v1/jobs/{cancelled}/cancel", key).status_code == 200

    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = service.get("/v1/jobs", key, params=params).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]

    queued = service.get("/v1/jobs", key, params={"status": "queued"}).json()["jobs"]
    assert [j["id"] for j in queued] == [i for i in ids[::-1] if i != cancelled]
    only = service.get("/v1/jobs", key, params={"status": "cancelled"}).json()["jobs"]
    assert [j["id"] for j in only] == [cancelled]
    bad = service.get("/v1/jobs", key, params={"status": "exploded"})
    assert bad.status_code == 422
    assert bad.headers["Content-Type"] == "application/problem+json"
    assert bad.json()["type"] == "urn:idcscan:problem:invalid-request"


def test_cancel_then_cancel_again(service: Service) -> None:
    key = service.add_client()
    job_id = service.submit(key, SAMPLE_SVS).json()["id"]
    cancelled = service.post(f"/v1/jobs/{job_id}/cancel", key)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    again = service.post(f"/v1/jobs/{job_id}/cancel", key)
    assert again.status_code == 409
    assert again.json()["type"] == "urn:idcscan:problem:job-finished"
    with service.db() as session:
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions.count("job.cancel") == 1
