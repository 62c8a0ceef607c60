"""Bad input gets a clear problem+json at once, and leaves no job row and no file behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SAMPLE_SVS

from .conftest import KOMBU_NOLOAD, Service, assert_rejected, plain_tiff

pytestmark = [pytest.mark.integration, KOMBU_NOLOAD]


def test_oversize_upload_is_413(service: Service, tmp_path: Path) -> None:
    big = tmp_path / "big.svs"
    with big.open("wb") as handle:
        handle.truncate(service.settings.max_upload_bytes + 1)
    assert_rejected(service, service.submit(service.add_client(), big), 413, "upload-too-large")


def test_oversize_chunked_upload_is_413(service: Service) -> None:
    """No Content-Length to check up front: the limit applies while the body streams in."""
    head = b'--b\r\nContent-Disposition: form-data; name="slide"; filename="s.svs"\r\n\r\n'
    piece = b"\0" * (1 << 20)

    def body():  # type: ignore[no-untyped-def]
        yield head
        for _ in range(service.settings.max_upload_bytes // len(piece) + 2):
            yield piece
        yield b"\r\n--b--\r\n"

    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    response = service.post("/v1/jobs", service.add_client(), data=body(), headers=headers)
    assert_rejected(service, response, 413, "upload-too-large")


def test_a_non_slide_is_415(service: Service, tmp_path: Path) -> None:
    note = tmp_path / "note.svs"
    note.write_text("not a slide at all\n" * 100)
    assert_rejected(service, service.submit(service.add_client(), note), 415, "unsupported-format")


def test_a_truncated_slide_is_422(service: Service, tmp_path: Path) -> None:
    cut = tmp_path / "cut.svs"
    cut.write_bytes(SAMPLE_SVS.read_bytes()[: SAMPLE_SVS.stat().st_size // 2])
    assert_rejected(service, service.submit(service.add_client(), cut), 422, "truncated-slide")


def test_a_slide_without_pixel_size_needs_mpp(service: Service, tmp_path: Path) -> None:
    key = service.add_client()
    slide = plain_tiff(tmp_path / "no-mpp.tiff")
    assert_rejected(service, service.submit(key, slide), 422, "no-pixel-size")
    accepted = service.submit(key, slide, data={"mpp": "4.0"})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["mpp"] == 4.0


def test_a_decompression_bomb_is_422(serve, service_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    service = serve(service_settings.model_copy(update={"max_slide_pixels": 1000 * 1000}))
    assert_rejected(
        service, service.submit(service.add_client(), SAMPLE_SVS), 422, "slide-too-large"
    )


def test_an_unknown_model_leaves_no_stored_slide(service: Service) -> None:
    key = service.add_client()
    assert_rejected(
        service, service.submit(key, SAMPLE_SVS, data={"model_id": "999"}), 422, "unknown-model"
    )


def test_labels_that_are_neither_geojson_nor_csv_are_422(service: Service) -> None:
    labels = ("labels.txt", b"tumour everywhere\n")
    response = service.submit(service.add_client(), SAMPLE_SVS, files={"labels": labels})
    assert_rejected(service, response, 422, "bad-labels")


def test_malformed_requests(service: Service) -> None:
    key = service.add_client()
    assert_rejected(
        service,
        service.post("/v1/jobs", key, data=b"x", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported-media-type",
    )
    assert_rejected(
        service, service.post("/v1/jobs", key, json={"slide_uri": ""}), 422, "invalid-request"
    )
    overlong = {"Idempotency-Key": "k" * 201}
    assert_rejected(
        service, service.submit(key, SAMPLE_SVS, headers=overlong), 422, "invalid-request"
    )
    assert_rejected(
        service, service.post("/v1/jobs", key, files={"mpp": (None, "0.5")}), 422, "missing-slide"
    )
    assert_rejected(
        service, service.submit(key, SAMPLE_SVS, data={"mpp": "-1"}), 422, "invalid-request"
    )
    assert_rejected(
        service, service.submit(key, SAMPLE_SVS, data={"colour": "red"}), 400, "malformed-upload"
    )


def test_slide_uri_is_refused_without_a_configured_root(serve, service_settings) -> None:  # type: ignore[no-untyped-def]
    service = serve(service_settings.model_copy(update={"slide_uri_root": None}))
    response = service.post("/v1/jobs", service.add_client(), json={"slide_uri": str(SAMPLE_SVS)})
    assert_rejected(service, response, 422, "slide-uri-disabled")
