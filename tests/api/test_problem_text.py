"""Problem details carry fixed, cause-specific text (security issue 9, L5): no library error text,
no path, no heap address and no echo of the client's own bytes reaches a client, whatever raised.

Each test sends input whose error, as raised deep down, carries such text (Pillow's and json's
messages, a worker's message naming a storage path and an object's address, a broker driver's
exception class) and checks what the client gets.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import requests

from idcscan.api.problems import INVALID_INPUT_TEXT, job_error_text
from idcscan.core.db import Client, ErrorKind, JobStatus, Model, transaction
from tests import factories
from tests.conftest import SAMPLE_SVS

from .conftest import KOMBU_NOLOAD, Service, assert_rejected

pytestmark = [pytest.mark.integration, KOMBU_NOLOAD]

ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def assert_fixed(response: requests.Response, tmp_path: Path, *echoes: str) -> dict[str, Any]:
    """The problem names no path of this machine, no address and none of the client's bytes."""
    text = response.text
    assert str(tmp_path) not in text
    assert "/tmp" not in text
    assert not ADDRESS.search(text), text
    for echo in echoes:
        assert echo not in text
    body: dict[str, Any] = response.json()
    return body


def test_a_damaged_image_gets_the_fixed_text_of_its_cause(service: Service, tmp_path: Path) -> None:
    # The API judges headers only (it decodes no image): a slide cut in half fails OpenSlide's
    # open, whose message names the file and libtiff's complaint.
    svs = SAMPLE_SVS.read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(svs[: len(svs) // 2])
    response = service.submit(service.add_client(), cut, name="cut.svs")
    assert_rejected(service, response, 422, "truncated-slide")
    body = assert_fixed(response, tmp_path, "TIFF", "penSlide", "cut.svs")
    assert body["detail"] == INVALID_INPUT_TEXT["truncated-slide"]


@pytest.mark.parametrize(
    "labels, echo",
    [
        (b'{"type": "FeatureCollection", "features": [}', "Expecting value"),  # json's text
        (b"x,y,label\n1,2,SECRET-PATIENT-NAME\n", "SECRET-PATIENT-NAME"),  # the client's bytes
    ],
)
def test_bad_labels_get_the_fixed_text(
    service: Service, tmp_path: Path, labels: bytes, echo: str
) -> None:
    response = service.submit(
        service.add_client(), SAMPLE_SVS, files={"labels": ("labels.csv", labels)}
    )
    assert_rejected(service, response, 422, "bad-labels")
    body = assert_fixed(response, tmp_path, echo)
    assert body["detail"] == INVALID_INPUT_TEXT["bad-labels"]


def test_an_unknown_part_name_is_not_echoed(service: Service, tmp_path: Path) -> None:
    name = "SECRET-" + "x" * 1000
    response = service.submit(service.add_client(), SAMPLE_SVS, files={name: ("a", b"1")})
    assert_rejected(service, response, 400, "malformed-upload")
    assert_fixed(response, tmp_path, name)


@pytest.mark.parametrize(
    "kind, stored",
    [
        (ErrorKind.INVALID_INPUT, "truncated-slide: TIFFReadDirectory: {path}: bad offset"),
        (ErrorKind.INVALID_INPUT, "unheard-of-code: <Reader object at 0x7f3a2b1c9d40> {path}"),
        (ErrorKind.INTERNAL, "internal error: OperationalError"),
        (ErrorKind.TIMEOUT, "scoring took longer than 3240 s"),
        (ErrorKind.WORKER_LOST, "the worker was lost 3 times while scoring this slide"),
    ],
)
def test_a_failed_jobs_error_is_fixed_text(
    service: Service, tmp_path: Path, kind: ErrorKind, stored: str
) -> None:
    """The worker records what went wrong for operators; the client reads the fixed text."""
    client_id, key = service.new_client()
    with transaction(service.db) as session:
        owner, model = session.get(Client, client_id), session.get(Model, service.model_id)
        assert owner is not None and model is not None
        job_id = factories.job(
            session,
            owner,
            model,
            JobStatus.FAILED,
            error_kind=kind.value,
            error_message=stored.format(path=service.settings.storage + "/slides/ab/abc.svs"),
        ).id
    for response in (
        service.get(f"/v1/jobs/{job_id}", key),
        service.get("/v1/jobs", key, params={"status": "failed"}),
    ):
        assert response.status_code == 200
        assert_fixed(response, tmp_path, "TIFFReadDirectory", "OperationalError", "Reader")
    error = service.get(f"/v1/jobs/{job_id}", key).json()["error"]
    assert error == {"kind": kind.value, "message": job_error_text(kind.value, stored)}
    assert error["message"]


def test_readiness_names_no_driver_exception(serve, service_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    service = serve(service_settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"}))
    ready = service.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": "ok", "broker": "unavailable"}


def test_http_errors_carry_the_services_own_text(service: Service, tmp_path: Path) -> None:
    key = service.add_client()
    texts = {}
    for response, status in (
        (service.post("/healthz"), 405),
        (service.get("/v1/nowhere", key), 404),
        (service.post("/v1/jobs", key, json={"slide_uri": "x" * 70_000}), 413),
    ):
        assert response.status_code == status
        assert response.headers["Content-Type"] == "application/problem+json"
        texts[status] = assert_fixed(response, tmp_path)["detail"]
    # werkzeug's own descriptions are not what clients read.
    assert "The method is not allowed" not in texts[405]
    assert "The requested URL was not found" not in texts[404]
    assert "exceeds the capacity limit" not in texts[413]
