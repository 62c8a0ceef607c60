"""The viewer's routes over a real scored job: signed links, deep zoom tiles from the stored
slide, the probability overlay, the page's data and every download.

The job is patient 8916 (a zip in the dataset's layout, ground truth included) scored by the
worker's JobRunner with the reference model; the API is a real HTTP server on SQLite and on
PostgreSQL. The browser itself is driven in tests/browser.
"""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idcscan.api import links
from idcscan.api.auth import revoke_client
from idcscan.core.db import Client, transaction
from tests.conftest import SAMPLE_SVS

from .conftest import KOMBU_NOLOAD, Service, patient_zip, score_job

pytestmark = [pytest.mark.integration, KOMBU_NOLOAD]


def _link(service: Service, key: str, job_id: str) -> str:
    response = service.post(f"/v1/jobs/{job_id}/viewer-link", key)
    assert response.status_code == 200, response.text
    url = response.json()["url"]
    assert url.startswith("/view/") and url.endswith("/")
    return str(url)


def test_the_viewer_of_a_scored_labelled_job(scoring_service: Service, tmp_path: Path) -> None:
    service = scoring_service
    key = service.add_client()
    job_id = score_job(service, key, patient_zip(tmp_path), "8916.zip")
    link = _link(service, key, job_id)

    page = service.get(link)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "openseadragon.min.js" in page.text
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "cdn" not in page.text.lower()

    data = service.get(link + "job.json").json()
    assert data["job"]["id"] == job_id
    assert data["result"]["confusion"]["fn"] >= 0
    width, height = data["slide"]["width"], data["slide"]["height"]
    assert width > 0 and height > 0
    # The overlay covers the scored grid in the slide's level-0 pixels.
    assert 0.9 * width <= data["overlay"]["width"] <= width + 100
    assert all(r["probability"] >= data["result"]["threshold"] for r in data["suspicious"])

    dzi = service.get(link + "slide.dzi")
    assert f'Width="{width}"' in dzi.text and f'Height="{height}"' in dzi.text
    top_level = int(np.ceil(np.log2(max(width, height))))
    tile = service.get(link + f"slide_files/{top_level}/0_0.jpeg")
    assert tile.status_code == 200 and tile.headers["Content-Type"] == "image/jpeg"
    assert tile.headers["Cache-Control"].startswith("private, max-age=")
    assert Image.open(io.BytesIO(tile.content)).size == (255, 255)  # 254 + 1 px overlap
    assert service.get(link + f"slide_files/{top_level}/999_0.jpeg").status_code == 404
    assert service.get(link + f"slide_files/{top_level + 1}/0_0.jpeg").status_code == 404

    overlay = Image.open(io.BytesIO(service.get(link + "overlay.png").content))
    assert overlay.mode == "RGBA"
    pixels = np.asarray(overlay)
    assert (pixels[..., 3] > 0).any() and (pixels[..., 3] == 0).any()  # tissue and background
    missed = (pixels[..., :3] == (0, 230, 255)).all(axis=-1)
    assert missed.sum() == data["result"]["confusion"]["fn"]
    over = np.asarray(
        Image.open(io.BytesIO(service.get(link + "overlay.png?over_threshold=1").content))
    )
    assert (over[..., 3] > 0).sum() <= (pixels[..., 3] > 0).sum()

    for item in data["downloads"]:
        download = service.get(link + item["url"])
        assert download.status_code == 200, item
        assert "attachment" in download.headers["Content-Disposition"]
        assert download.content
    assert service.get(link + "download/secrets.txt").status_code == 404


def test_a_bad_expired_or_foreign_link_opens_nothing(
    scoring_service: Service, tmp_path: Path
) -> None:
    service = scoring_service
    key = service.add_client()
    job_id = score_job(service, key, SAMPLE_SVS, "slide.svs")
    link = _link(service, key, job_id)
    token = link.split("/")[2]
    job, client, expiry, signature = token.split(".")
    secret = links.signing_key(service.settings)

    other_job = str(uuid.uuid4())
    expired = links.mint(secret, uuid.UUID(job_id), int(client), int(time.time()) - 1)
    for bad in (
        f"{job}.{client}.{int(expiry) + 3600}.{signature}",  # a longer life, same signature
        f"{other_job}.{client}.{expiry}.{signature}",  # another job
        expired,
        "not-a-token",
    ):
        for path in ("", "job.json", "slide.dzi", "slide_files/0/0_0.jpeg", "overlay.png"):
            response = service.get(f"/view/{bad}/{path}")
            assert response.status_code == 403, (bad, path)
            assert response.json()["type"] == "urn:idcscan:problem:viewer-link-invalid"

    # Another client's key cannot mint a link to the job, and a link of the revoked client dies.
    stranger = service.add_client()
    assert service.post(f"/v1/jobs/{job_id}/viewer-link", stranger).status_code == 404
    assert service.get(link + "job.json").status_code == 200
    with transaction(service.db) as session:
        revoke_client(session, session.get_one(Client, int(client)))
    assert service.get(link + "job.json").status_code == 403


def test_a_link_waits_for_success(scoring_service: Service) -> None:
    service = scoring_service
    key = service.add_client()
    job_id = service.submit(key, SAMPLE_SVS).json()["id"]
    response = service.post(f"/v1/jobs/{job_id}/viewer-link", key)
    assert response.status_code == 409
    assert response.json()["type"] == "urn:idcscan:problem:job-not-succeeded"


def test_the_slide_cache_keeps_recent_slides_open(tmp_path: Path) -> None:
    """Tiles of one slide open it once; the least recently used slide is dropped first."""
    from idcscan.api.deepzoom import SlideCache

    cache = SlideCache(size=1)
    first = cache.get(str(SAMPLE_SVS), None)
    assert cache.get(str(SAMPLE_SVS), None) is first and cache.opened == 1
    assert first.tile(first.generator.level_count - 1, 0, 0) is not None
    assert first.tile(first.generator.level_count, 0, 0) is None
    flat = cache.get(str(patient_zip(tmp_path)), None)
    assert flat.shared_image and not first.shared_image
    assert cache.get(str(SAMPLE_SVS), None) is not first and cache.opened == 3


def test_the_tile_cache_keeps_tiles_within_its_budget() -> None:
    from idcscan.api.deepzoom import SlideCache

    slide = str(SAMPLE_SVS)
    level = SlideCache().get(slide, None).generator.level_count - 1
    sizes = [len(SlideCache().tile(slide, None, level, col, 0) or b"") for col in range(4)]
    cache = SlideCache(tile_bytes=sum(sizes[1:]))  # room for three of the four
    first = cache.tile(slide, None, level, 0, 0)
    assert first is not None and cache.tile(slide, None, level, 0, 0) is first
    for col in range(1, 4):
        assert cache.tile(slide, None, level, col, 0) is not None
    assert 0 < cache.tiles.size <= sum(sizes[1:])
    assert cache.tiles.get((slide, None, level, 0, 0)) is None  # the least recent went
    assert cache.tiles.get((slide, None, level, 3, 0)) is not None
    assert cache.tile(slide, None, level, 99, 0) is None
    assert cache.opened == 1


def test_the_signing_key_is_made_once_and_private_unless_given(tmp_path: Path) -> None:
    from idcscan.core.settings import get_settings

    embedded = get_settings(data_dir=tmp_path)
    key = links.signing_key(embedded)
    assert len(key) >= 48 and links.signing_key(embedded) == key
    assert (tmp_path / links.SECRET_FILE).stat().st_mode & 0o777 == 0o600
    given = get_settings(data_dir=tmp_path, secret_key="a shared secret of the operators")
    assert links.signing_key(given) == b"a shared secret of the operators"
    token = links.mint(key, uuid.uuid4(), 7, int(time.time()) + 60)
    assert links.verify(key, token) is not None
    assert links.verify(links.signing_key(given), token) is None
