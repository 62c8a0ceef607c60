"""The worker re-checks what it opens: a hostile blob an older API accepted fails cleanly and fast,
and every long loop stops when the job is cancelled."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from idcscan.core.db import ErrorKind, Job, JobStatus, SlideResult, TileScore
from idcscan.core.settings import Settings
from idcscan.core.slides import open_slide
from idcscan.core.storage import Storage
from idcscan.core.tiles import TileSpec
from idcscan.worker.jobs import JobRunner, results_prefix
from idcscan.worker.pipeline import Cancelled
from idcscan.worker.tiling import find_tissue, iter_tile_blocks, plan_tiling
from tests.conftest import SAMPLE_SVS
from tests.hostile import canary_jpeg, hostile_vms, sparse_tiff, zip_lying_about_sizes

from .test_jobs import new_job, runner, sessions, settings  # noqa: F401 (fixtures)

JobMaker = Callable[..., uuid.UUID]


def _as_uploaded_blob(storage: Storage, source: Path, suffix: str) -> tuple[str, str]:
    """Store `source` as an older API stored uploads: under its hash, the client's suffix kept."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    uri = storage.put_file(source, f"slides/{digest[:2]}/{digest}{suffix}")
    return uri, digest


def _failed_with(db: sessionmaker[Session], job_id: uuid.UUID, code: str) -> None:
    with db() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.status == JobStatus.FAILED and job.error_kind == ErrorKind.INVALID_INPUT
        assert (job.error_message or "").startswith(code), job.error_message
        for table in (TileScore, SlideResult):
            rows = session.scalar(
                select(func.count()).select_from(table).where(table.job_id == job_id)
            )
            assert rows == 0


def test_an_uploaded_vms_is_refused_by_the_worker_unread(
    runner: JobRunner,  # noqa: F811
    sessions: sessionmaker[Session],  # noqa: F811
    new_job: JobMaker,  # noqa: F811
    settings: Settings,  # noqa: F811
    tmp_path: Path,
) -> None:
    """H1: a VMS blob stored by an older API names host files; the worker never follows them."""
    canary = canary_jpeg(tmp_path / "canary.jpg")
    os.utime(canary, (946684800, time.time()))
    storage = Storage(settings.storage)
    uri, digest = _as_uploaded_blob(storage, hostile_vms(tmp_path / "i.vms", canary), ".vms")
    job_id = new_job(uri, mpp=0.5, slide_sha256=digest, as_is={"slide"})
    assert runner.run(job_id) == "failed"
    _failed_with(sessions, job_id, "unsupported-slide-format")
    assert canary.stat().st_atime == 946684800, "the host file was read"
    assert not storage.exists(results_prefix(job_id))


@pytest.mark.timeout(60)
def test_a_huge_sparse_tiff_fails_at_once(
    runner: JobRunner,  # noqa: F811
    sessions: sessionmaker[Session],  # noqa: F811
    new_job: JobMaker,  # noqa: F811
    tmp_path: Path,
) -> None:
    """M5: the worker enforces the same limits as the API, before reading any region."""
    slide = sparse_tiff(tmp_path / "sparse.tiff", 200_000, 200_000)
    job_id = new_job(str(slide), mpp=0.25)
    started = time.perf_counter()
    assert runner.run(job_id) == "failed"
    assert time.perf_counter() - started < 10
    _failed_with(sessions, job_id, "slide-too-large")


def test_a_zip_lying_about_its_sizes_fails_in_the_worker(
    runner: JobRunner,  # noqa: F811
    sessions: sessionmaker[Session],  # noqa: F811
    new_job: JobMaker,  # noqa: F811
    tmp_path: Path,
) -> None:
    """M4: the worker reads zip members in chunks too: a member claiming 100 bytes that inflates
    to 1.4 GB is damaged after 100 bytes, with no file name in the error."""
    archive = zip_lying_about_sizes(tmp_path / "bomb.zip", 1400 * 1024**2)
    job_id = new_job(str(archive))
    assert runner.run(job_id) == "failed"
    _failed_with(sessions, job_id, "truncated-slide")
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and "idx5" not in (job.error_message or "")


def test_the_tissue_mask_stops_when_cancelled() -> None:
    """M5: finding tissue reads block after block; each block first asks whether to go on."""
    asked = 0

    def cancelled_on_third_ask() -> bool:
        nonlocal asked
        asked += 1
        return asked >= 3

    with open_slide(SAMPLE_SVS) as slide:
        plan = plan_tiling(slide, TileSpec())
        with pytest.raises(Cancelled):
            find_tissue(slide, plan, should_stop=cancelled_on_third_ask)
        assert asked == 3
        # Without a stop, the same mask asks once per block, more than three times.
        blocks = 0

        def count() -> bool:
            nonlocal blocks
            blocks += 1
            return False

        find_tissue(slide, plan, should_stop=count)
        assert blocks > 3


def test_tile_reading_stops_when_cancelled() -> None:
    with open_slide(SAMPLE_SVS) as slide:
        plan = plan_tiling(slide, TileSpec())
        tissue = find_tissue(slide, plan)
        assert tissue.tissue.any()
        with pytest.raises(Cancelled):
            next(iter_tile_blocks(slide, plan, tissue.tissue, should_stop=lambda: True))


def test_the_mask_reads_within_its_budget(assembled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pyramid whose level nearest the mask's scale is too large to read whole is read at a
    coarser level that fits; with none that fits, the slide is refused before any read."""
    from idcscan.core.errors import InvalidInput
    from idcscan.worker import tiling

    with open_slide(assembled) as slide:
        # 16 px tiles at 4 um/px: the mask's scale is 8 um/px, level 1 of the three.
        plan = plan_tiling(slide, TileSpec(tile_size=16, stride=16))
        natural = find_tissue(slide, plan)
        assert natural.level == 1
        grid = plan.grid
        area = (grid.cols * grid.stride0 + grid.tile0) * (grid.rows * grid.stride0 + grid.tile0)
        natural_read = area / slide.level_downsamples[natural.level] ** 2
        monkeypatch.setattr(tiling, "MASK_MAX_READ_PIXELS", natural_read - 1)
        coarser = find_tissue(slide, plan)
        assert coarser.level > natural.level
        assert coarser.tissue.shape == natural.tissue.shape and coarser.tissue.any()
        monkeypatch.setattr(tiling, "MASK_MAX_READ_PIXELS", 1)
        with pytest.raises(InvalidInput) as refused:
            find_tissue(slide, plan, should_stop=lambda: pytest.fail("read a block"))
        assert refused.value.code == "slide-too-large"
