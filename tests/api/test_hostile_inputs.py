"""Hostile slides and labels sent through a real HTTP server: each is refused with a fixed,
cause-specific problem, leaves no job row and no file, and the service answers afterwards."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SAMPLE_SVS
from tests.hostile import (
    blank_png,
    canary_jpeg,
    hostile_vms,
    sparse_tiff,
    zip_bomb,
    zip_lying_about_sizes,
)

from .conftest import KOMBU_NOLOAD, Service, plain_tiff, refused

pytestmark = [pytest.mark.integration, KOMBU_NOLOAD]


def _atime_is_recorded(folder: Path) -> bool:
    probe = folder / "atime-probe"
    probe.write_bytes(b"x")
    os.utime(probe, (946684800, time.time()))
    probe.read_bytes()
    return probe.stat().st_atime > 946684800


def test_a_vms_naming_host_files_is_refused_unread(service: Service, tmp_path: Path) -> None:
    """H1: a Hamamatsu VMS index is text naming other files; an upload is never one."""
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = canary_jpeg(outside / "canary.jpg")
    os.utime(canary, (946684800, time.time()))  # accessed long ago; a read moves it
    key = service.add_client()
    bodies = []
    for name, target in [("a.vms", canary), ("b.vms", outside / "no-such-file.jpg")]:
        vms = hostile_vms(tmp_path / name, target)
        for client_name in (name, "slide.svs", "slide"):  # the client's suffix changes nothing
            response = service.submit(key, vms, name=client_name, data={"mpp": "0.5"})
            body = refused(service, response, 415, "unsupported-slide-format")
            bodies.append(body)
            assert "canary" not in response.text and "no-such-file" not in response.text
    # Whether the named file exists is not told: every answer is the same.
    assert all(body == bodies[0] for body in bodies)
    if _atime_is_recorded(tmp_path):
        assert canary.stat().st_atime == 946684800, "the host file was read"


def test_the_stored_name_comes_from_the_content_not_the_client(
    service: Service, tmp_path: Path
) -> None:
    """L4: the storage key keeps a suffix of the detected format, none of the client's name."""
    key = service.add_client()
    slide = plain_tiff(tmp_path / "p.tiff", mpp=4.0)
    labels = ("labels.mrn12345", b"row,col,label\n0,0,1\n")
    accepted = service.submit(key, slide, name="patient.mrn12345", files={"labels": labels})
    assert accepted.status_code == 202, accepted.text
    svs = service.submit(key, SAMPLE_SVS, name="x.mrxs")
    assert svs.status_code == 202, svs.text
    names = sorted(p.name for p in service.stored_files())
    suffixes = sorted(Path(n).suffix for n in names)
    assert suffixes == [".csv", ".svs", ".tiff"], names
    assert not any("mrn" in n or "mrxs" in n for n in names)


def test_a_huge_sparse_tiff_is_refused_at_submit(service: Service, tmp_path: Path) -> None:
    """M5: 1.2 MB declaring 200000 x 200000 px and no pyramid: refused before any worker."""
    slide = sparse_tiff(tmp_path / "sparse.tiff", 200_000, 200_000)
    assert slide.stat().st_size < 1_300_000
    assert service.settings.max_slide_pixels >= 200_000 * 200_000  # under the plain pixel limit
    response = service.submit(service.add_client(), slide, data={"mpp": "0.25"})
    refused(service, response, 422, "slide-too-large")


def test_a_png_beyond_pillows_bomb_guard_is_a_4xx(service: Service, tmp_path: Path) -> None:
    """L2: Pillow's DecompressionBombError (here 256 Mpx in 750 kB) is a 422, not a 500."""
    png = blank_png(tmp_path / "bomb.png", 16_000, 16_000)
    response = service.submit(service.add_client(), png, data={"mpp": "1.0"})
    refused(service, response, 422, "slide-too-large")


def test_a_flat_image_is_judged_by_its_header(service: Service, tmp_path: Path) -> None:
    """M4: a 12000 x 12000 PNG (432 MB decoded, under Pillow's guard) is refused by its header."""
    png = blank_png(tmp_path / "wide.png", 12_000, 12_000)
    started = time.perf_counter()
    response = service.submit(service.add_client(), png, data={"mpp": "1.0"})
    refused(service, response, 422, "slide-too-large")
    assert time.perf_counter() - started < 5  # decoding it takes far longer on these machines


@pytest.mark.parametrize(
    ("builder", "code"),
    [(zip_bomb, "archive-too-large"), (zip_lying_about_sizes, "truncated-slide")],
)
def test_a_zip_is_read_against_a_real_byte_budget(
    service: Service, tmp_path: Path, builder: Any, code: str
) -> None:
    """M4: a 1.4 MB zip inflating to 1.4 GB is refused; when it claims 100 bytes, reading stops
    there (a damaged archive) instead of inflating it all in one call."""
    archive = builder(tmp_path / "bomb.zip", 1400 * 1024**2)
    assert archive.stat().st_size < 2 * 1024**2
    response = service.submit(service.add_client(), archive)
    refused(service, response, 422, code)
