"""Input that once answered 500 (security issue 9, L2) gets a 4xx problem+json instead, leaves no
row and no file behind, and the service keeps answering. Each test runs on SQLite and PostgreSQL:
the database is where most of these failed (SQLite's OverflowError on integers beyond 64 bits,
PostgreSQL's int4/int8 range and its refusal of NUL in text)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from idcscan.core.db import Client
from tests.conftest import SAMPLE_SVS

from .conftest import KOMBU_NOLOAD, Service, assert_rejected, plain_tiff
from .test_tenancy import tenant

pytestmark = [pytest.mark.integration, KOMBU_NOLOAD]

# Beyond int4 (PostgreSQL's integer keys), int8, and any 64-bit integer.
BEYOND_THE_KEYS = [2**31, 2**63, 2**64, 10**30]
ID_ROUTES = [
    ("get", "/v1/models/{}"),
    ("post", "/v1/models/{}/activate"),
    ("post", "/v1/clients/{}/revoke"),
    ("post", "/v1/clients/{}/rotate"),
]


def _clients(service: Service) -> int:
    with service.db() as session:
        return int(session.scalar(select(func.count()).select_from(Client)) or 0)


def test_ids_beyond_the_key_range_name_nothing(service: Service) -> None:
    admin = service.add_client(admin=True)
    for value in [*BEYOND_THE_KEYS, 0]:
        for method, route in ID_ROUTES:
            response = getattr(service, method)(route.format(value), admin)
            assert_rejected(service, response, 404, "not-found")
    assert service.get("/v1/models", admin).status_code == 200


def test_model_ids_beyond_the_key_range_in_a_query_or_body_are_422(service: Service) -> None:
    key = service.add_client()
    root = Path(service.settings.slide_uri_root or "")
    plain_tiff(root / "case.tiff", mpp=4.0)
    for value in BEYOND_THE_KEYS:
        stats = service.get("/v1/stats/confusion", key, params={"model_id": value})
        assert_rejected(service, stats, 422, "invalid-request")
        by_uri = service.post("/v1/jobs", key, json={"slide_uri": "case.tiff", "model_id": value})
        assert_rejected(service, by_uri, 422, "invalid-request")
        upload = service.submit(key, SAMPLE_SVS, data={"model_id": str(value)})
        assert_rejected(service, upload, 422, "invalid-request")


@pytest.mark.parametrize("value", ["xml", "", "CSV", "json\x00", "j" * 5000])
def test_unknown_tile_formats_are_422(service: Service, value: str) -> None:
    key = service.add_client()
    job = service.submit(key, SAMPLE_SVS).json()["id"]
    response = service.get(f"/v1/jobs/{job}/tiles", key, params={"format": value})
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == "urn:idcscan:problem:invalid-request"
    assert service.get(f"/v1/jobs/{job}", key).status_code == 200


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"name=mallory", "application/x-www-form-urlencoded"),
        (
            b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nm\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),
        (b"mallory", "text/plain"),
        (b"", None),
    ],
)
def test_a_client_needs_a_json_body(
    service: Service, body: bytes, content_type: str | None
) -> None:
    admin = service.add_client(admin=True)
    before = _clients(service)
    headers = {"Content-Type": content_type} if content_type else {}
    response = service.post("/v1/clients", admin, data=body, headers=headers)
    assert_rejected(service, response, 415, "unsupported-media-type")
    assert _clients(service) == before


@pytest.mark.parametrize("name", ["mal\x00lory", "mal\nlory", "\x1b[31mred", "tab\there"])
def test_control_characters_in_a_client_name_are_422(service: Service, name: str) -> None:
    admin = service.add_client(admin=True)
    before = _clients(service)
    response = service.post("/v1/clients", admin, json={"name": name})
    assert_rejected(service, response, 422, "invalid-request")
    assert _clients(service) == before


@pytest.mark.parametrize(
    "uri",
    [
        "case\x00.tiff",
        "cases/\x00/case.tiff",
        "a" * 300 + ".tiff",  # one name longer than any file system allows
        "cases/" + "é" * 200 + ".tiff",  # 400 bytes in UTF-8
        "é" * 3000,  # 3000 characters, 6000 bytes
    ],
)
def test_a_slide_uri_no_file_can_have_is_422(service: Service, uri: str) -> None:
    response = service.post("/v1/jobs", service.add_client(), json={"slide_uri": uri})
    assert_rejected(service, response, 422, "invalid-request")


@pytest.mark.parametrize("labels", ["missing.csv", "cases", "cases/", "case.tiff/labels.csv"])
def test_a_labels_uri_that_names_no_file_is_422(service: Service, labels: str) -> None:
    key, root = tenant(service)  # the client's own folder under the slide_uri root
    (root / "cases").mkdir()
    plain_tiff(root / "case.tiff", mpp=4.0)
    response = service.post("/v1/jobs", key, json={"slide_uri": "case.tiff", "labels_uri": labels})
    assert_rejected(service, response, 422, "labels-not-found")


@pytest.mark.parametrize(
    "value",
    [
        "-398",
        "1700000000",
        "2026-10-02",
        "2026-10-02T00:00:00",
        "yesterday",
        "2026-13-01T00:00:00Z",
    ],
)
def test_a_period_bound_must_be_a_date_time_with_its_offset(service: Service, value: str) -> None:
    """The document promises RFC 3339 date-times; a number was taken as a Unix timestamp and a
    date or a time without offset as something the client may not have meant."""
    key = service.add_client()
    for bound in ("since", "until"):
        response = service.get("/v1/stats/confusion", key, params={bound: value})
        assert response.status_code == 422, (bound, value, response.text)
        assert response.json()["type"] == "urn:idcscan:problem:invalid-request"
    assert (
        service.get(
            "/v1/stats/confusion", key, params={"since": "2026-10-02T00:00:00+02:00"}
        ).status_code
        == 200
    )
