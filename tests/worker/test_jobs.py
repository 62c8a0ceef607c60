"""A job's life on the worker, without the queue: on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from idcscan.core import jobstate
from idcscan.core.db import (
    ConfusionStat,
    ErrorKind,
    Job,
    JobStatus,
    SlideResult,
    TileScore,
    make_engine,
    make_sessionmaker,
    utcnow,
)
from idcscan.core.onnxmodel import OnnxModel
from idcscan.core.settings import Settings, get_settings
from idcscan.core.storage import Storage
from idcscan.worker.jobs import JobRunner, results_prefix
from idcscan.worker.modelcache import ModelCache
from idcscan.worker.reconciler import reconcile
from tests.conftest import SAMPLE_PATIENTS, SAMPLE_SVS

JobMaker = Callable[..., uuid.UUID]


@pytest.fixture
def settings(migrated_url: str, tmp_path: Path) -> Settings:
    return get_settings(
        data_dir=tmp_path / "data", database_url=migrated_url, lease_s=5, batch_size=64
    )


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.database)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def runner(settings: Settings, sessions: sessionmaker[Session]) -> JobRunner:
    return JobRunner(settings, sessions, ModelCache(settings, threads=1))


@pytest.fixture
def new_job(make_job: Callable[[Settings], JobMaker], settings: Settings) -> JobMaker:
    return make_job(settings)


def job(sessions: sessionmaker[Session], job_id: uuid.UUID) -> Job:
    with sessions() as session:
        found = session.get(Job, job_id)
        assert found is not None
        return found


def leased(
    sessions: sessionmaker[Session],
    job_id: uuid.UUID,
    owner: str,
    attempts: int,
    expires_in_s: float,
) -> None:
    """Put the job in another worker's hands, its lease ending `expires_in_s` from now."""
    with sessions() as session, session.begin():
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status="running",
                attempts=attempts,
                lease_owner=owner,
                lease_expires_at=utcnow() + timedelta(seconds=expires_in_s),
            )
        )


def count(sessions: sessionmaker[Session], table: type, job_id: uuid.UUID) -> int:
    with sessions() as session:
        return int(
            session.scalar(select(func.count()).select_from(table).where(table.job_id == job_id))
            or 0
        )


def test_job_succeeds_with_results_and_confusion(
    runner: JobRunner,
    sessions: sessionmaker[Session],
    new_job: JobMaker,
    assembled: Path,
    settings: Settings,
) -> None:
    job_id = new_job(str(assembled), labels=str(assembled.with_suffix(".tiles.csv")))
    assert runner.run(job_id) == "succeeded"
    done = job(sessions, job_id)
    assert done.status == JobStatus.SUCCEEDED and done.attempts == 1 and done.lease_owner is None
    assert done.tiles_done == done.tiles_total and done.tiles_total >= 169
    assert count(sessions, TileScore, job_id) == done.tiles_total
    with sessions() as session:
        result = session.get(SlideResult, job_id)
        stat = session.get(ConfusionStat, job_id)
        assert result is not None and stat is not None
        assert result.tissue_tiles == done.tiles_total and result.effective_mpp == pytest.approx(
            4.0
        )
        assert stat.tp + stat.fn == 111
        assert result.heatmap_uri and result.heatmap_uri.startswith(settings.storage)
    storage = Storage(settings.storage)
    for name in ("heatmap.png", "annotations.geojson", "tiles.csv"):
        assert storage.exists(f"{results_prefix(job_id)}/{name}")


def test_rerun_replaces_instead_of_adding(
    runner: JobRunner, sessions: sessionmaker[Session], new_job: JobMaker
) -> None:
    job_id = new_job(str(SAMPLE_PATIENTS / "8916"))
    assert runner.run(job_id) == "succeeded"
    first = count(sessions, TileScore, job_id)
    # A second delivery of a finished job does nothing.
    assert runner.run(job_id) == "skipped"
    # A rerun (e.g. after a lost lease) rewrites the same rows.
    with sessions() as session, session.begin():
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.QUEUED.value))
    assert runner.run(job_id) == "succeeded"
    assert count(sessions, TileScore, job_id) == first
    assert count(sessions, ConfusionStat, job_id) == 1
    assert job(sessions, job_id).attempts == 2


def _bad_inputs(tmp: Path) -> dict[str, tuple[str, float | None]]:
    truncated = tmp / "truncated.svs"
    data = SAMPLE_SVS.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    text = tmp / "report.png"
    text.write_text("not an image at all")
    plain = tmp / "plain.png"
    Image.new("RGB", (300, 300), (180, 60, 140)).save(plain)
    evil = tmp / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../../8916/1/8916_idx5_x1_y1_class1.png", b"x")
    return {
        "truncated-slide": (str(truncated), None),
        "unsupported-format": (str(text), None),
        "no-pixel-size": (str(plain), None),
        "unsafe-archive": (str(evil), None),
        "missing-slide": (str(tmp / "gone.svs"), None),
    }


@pytest.mark.parametrize(
    "code",
    ["truncated-slide", "unsupported-format", "no-pixel-size", "unsafe-archive", "missing-slide"],
)
def test_bad_input_fails_cleanly(
    runner: JobRunner,
    sessions: sessionmaker[Session],
    new_job: JobMaker,
    tmp_path: Path,
    settings: Settings,
    code: str,
) -> None:
    uri, mpp = _bad_inputs(tmp_path)[code]
    job_id = new_job(uri, mpp=mpp)
    assert runner.run(job_id) == "failed"
    failed = job(sessions, job_id)
    assert failed.status == JobStatus.FAILED and failed.error_kind == ErrorKind.INVALID_INPUT
    assert failed.error_message and failed.error_message.startswith(code)
    assert count(sessions, TileScore, job_id) == count(sessions, SlideResult, job_id) == 0
    assert not Storage(settings.storage).exists(results_prefix(job_id))


@pytest.mark.parametrize("named", ["slide", "labels"])
def test_the_worker_reads_only_what_the_service_stored(
    runner: JobRunner,
    sessions: sessionmaker[Session],
    new_job: JobMaker,
    assembled: Path,
    settings: Settings,
    named: str,
) -> None:
    # A row naming a readable slide or labels file outside storage (written by hand, or by an
    # API before slide_uri files were copied in at submit) is refused, not read.
    labels = str(assembled.with_suffix(".tiles.csv"))
    job_id = new_job(str(assembled), labels=labels, as_is={named})
    assert runner.run(job_id) == "failed"
    failed = job(sessions, job_id)
    assert failed.status == JobStatus.FAILED and failed.error_kind == ErrorKind.INVALID_INPUT
    what = {"slide": "slide", "labels": "labels file"}[named]
    assert failed.error_message == (
        f"{named}-outside-storage: the job's {what} is not in the service's storage"
    )
    assert count(sessions, TileScore, job_id) == count(sessions, SlideResult, job_id) == 0
    assert not Storage(settings.storage).exists(results_prefix(job_id))
    # The same files, stored, are scored: the worker still works.
    assert runner.run(new_job(str(assembled), labels=labels)) == "succeeded"


def test_slide_beyond_the_size_limit(
    sessions: sessionmaker[Session], new_job: JobMaker, settings: Settings
) -> None:
    small = settings.model_copy(update={"max_slide_pixels": 1000 * 1000})
    runner = JobRunner(small, sessions, ModelCache(small, threads=1))
    job_id = new_job(str(SAMPLE_SVS))
    assert runner.run(job_id) == "failed"
    assert (job(sessions, job_id).error_message or "").startswith("slide-too-large")


def test_no_tissue_is_a_valid_empty_result(
    runner: JobRunner, sessions: sessionmaker[Session], new_job: JobMaker, tmp_path: Path
) -> None:
    blank = tmp_path / "blank.png"
    Image.new("RGB", (500, 400), "white").save(blank)
    job_id = new_job(str(blank), mpp=1.0)
    assert runner.run(job_id) == "succeeded"
    with sessions() as session:
        result = session.get(SlideResult, job_id)
        assert result is not None and result.tissue_tiles == 0 and result.slide_call == "no_tissue"


def test_cancelled_job_stops_and_leaves_nothing(
    sessions: sessionmaker[Session], new_job: JobMaker, settings: Settings
) -> None:
    job_id = new_job(str(SAMPLE_PATIENTS / "8916"))

    class CancelOnLoad(ModelCache):
        """The real model cache; the job is cancelled (as the API's cancel does, through
        jobstate) the moment the worker loads the model to score it."""

        def get(self, location: str, registered: dict[str, str] | None = None) -> OnnxModel:
            with sessions() as session, session.begin():
                assert jobstate.cancel(session, job_id, now=utcnow())
            return super().get(location, registered)

    runner = JobRunner(settings, sessions, CancelOnLoad(settings, threads=1))
    assert runner.run(job_id) == "cancelled"
    cancelled = job(sessions, job_id)
    assert cancelled.status == JobStatus.CANCELLED and cancelled.lease_owner is None
    assert count(sessions, TileScore, job_id) == count(sessions, SlideResult, job_id) == 0
    assert not Storage(settings.storage).exists(results_prefix(job_id))


def test_attempt_cap_ends_as_worker_lost(
    runner: JobRunner, sessions: sessionmaker[Session], new_job: JobMaker, settings: Settings
) -> None:
    job_id = new_job(str(SAMPLE_PATIENTS / "8916"))
    leased(sessions, job_id, "dead", attempts=settings.max_attempts, expires_in_s=-1)
    assert runner.run(job_id) == "skipped"
    lost = job(sessions, job_id)
    assert lost.status == JobStatus.FAILED and lost.error_kind == ErrorKind.WORKER_LOST


def test_live_lease_of_another_worker_is_respected(
    runner: JobRunner, sessions: sessionmaker[Session], new_job: JobMaker
) -> None:
    job_id = new_job(str(SAMPLE_PATIENTS / "8916"))
    leased(sessions, job_id, "other", attempts=1, expires_in_s=60)
    assert runner.run(job_id) == "skipped"
    assert job(sessions, job_id).lease_owner == "other"


def test_reconciler_republishes_stuck_jobs(
    sessions: sessionmaker[Session], new_job: JobMaker, settings: Settings
) -> None:
    never_started = new_job(str(SAMPLE_PATIENTS / "8916"))
    fresh = new_job(str(SAMPLE_PATIENTS / "8916"))
    expired = new_job(str(SAMPLE_PATIENTS / "8916"))
    hopeless = new_job(str(SAMPLE_PATIENTS / "8916"))
    past = utcnow() - timedelta(seconds=settings.lease_s + 1)
    message_lost = new_job(str(SAMPLE_PATIENTS / "8916"))
    in_line = new_job(str(SAMPLE_PATIENTS / "8916"))
    beyond_window = utcnow() - timedelta(seconds=settings.visibility_timeout_s + 1)
    with sessions() as session, session.begin():
        # never_started: its publish failed (published_at null); fresh: published just now.
        session.execute(update(Job).where(Job.id == fresh).values(published_at=utcnow()))
        # Published longer ago than the broker's visibility window: the message may be lost.
        session.execute(
            update(Job).where(Job.id == message_lost).values(published_at=beyond_window)
        )
        # Waiting in line for longer than a lease, but within the window: not published again.
        session.execute(update(Job).where(Job.id == in_line).values(published_at=past))
        session.execute(
            update(Job)
            .where(Job.id == expired)
            .values(status="running", attempts=1, lease_owner="gone", lease_expires_at=past)
        )
        session.execute(
            update(Job)
            .where(Job.id == hopeless)
            .values(
                status="running",
                attempts=settings.max_attempts,
                lease_owner="gone",
                lease_expires_at=past,
            )
        )
    published: list[uuid.UUID] = []
    done = reconcile(settings, sessions, published.append)
    assert sorted(published, key=str) == sorted([never_started, expired, message_lost], key=str)
    assert done.failed == [hopeless]
    assert (
        job(sessions, expired).status == JobStatus.QUEUED
        and job(sessions, fresh).status == JobStatus.QUEUED
        and job(sessions, in_line).status == JobStatus.QUEUED
    )
    assert job(sessions, hopeless).error_kind == ErrorKind.WORKER_LOST
    # Touched jobs are not republished on the next tick.
    published.clear()
    reconcile(settings, sessions, published.append)
    assert published == []


def test_progress_is_written_a_few_times_a_second_at_most() -> None:
    from idcscan.worker.jobs import PROGRESS_INTERVAL_S, Claim, Heartbeat

    writes: list[tuple[int, int | None]] = []

    class Counting(Heartbeat):
        def _write(self) -> None:
            writes.append((self.done, self.total))
            self._written = (self.done, self.total)
            self._renewed = time.monotonic()

    claim = Claim(uuid.uuid4(), "me", "slide", None, None, 1, 1, "model.onnx")
    started = time.monotonic()
    with Counting(None, claim, lease_s=60) as heartbeat:  # type: ignore[arg-type]
        done = 0
        while time.monotonic() - started < 1.0:
            done += 1
            heartbeat.progress(done, 10**9)
    assert 1 <= len(writes) <= 1.0 / PROGRESS_INTERVAL_S + 1
    assert writes[-1][0] > writes[0][0]


def test_tile_rows_hold_what_was_scored(
    runner: JobRunner,
    sessions: sessionmaker[Session],
    new_job: JobMaker,
    assembled: Path,
    settings: Settings,
    tmp_path: Path,
) -> None:
    """Every tile row (COPY on PostgreSQL, executemany on SQLite) equals the tile CSV the same
    score wrote: positions, probability, and the label or NULL where the tile had none."""
    lines = assembled.with_suffix(".tiles.csv").read_text().splitlines()
    half = tmp_path / "half.tiles.csv"  # half the patches labelled: the rest are NULL
    half.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    job_id = new_job(str(assembled), labels=str(half))
    assert runner.run(job_id) == "succeeded"
    with sessions() as session:
        stored = session.execute(
            select(
                TileScore.row,
                TileScore.col,
                TileScore.x,
                TileScore.y,
                TileScore.probability,
                TileScore.label,
            )
            .where(TileScore.job_id == job_id)
            .order_by(TileScore.row, TileScore.col)
        ).all()
    csv_text = Path(Storage(settings.storage).uri(f"{results_prefix(job_id)}/tiles.csv"))
    expected = sorted(
        (int(r), int(c), int(x), int(y), float(p), int(label) if label else None)
        for r, c, x, y, p, label in (
            line.split(",") for line in csv_text.read_text().splitlines()[1:]
        )
    )
    assert len(stored) == len(expected) >= 169
    assert {label for *_, label in stored} == {0, 1, None}
    for row, want in zip(stored, expected, strict=True):
        assert tuple(row[:4]) == want[:4] and row[5] == want[5]
        assert row[4] == pytest.approx(want[4], abs=1e-6)


def test_the_job_logs_where_its_time_went(
    runner: JobRunner, new_job: JobMaker, assembled: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = new_job(str(assembled))
    with caplog.at_level("INFO", logger="idcscan.worker.jobs"):
        assert runner.run(job_id) == "succeeded"
    (record,) = [r for r in caplog.records if hasattr(r, "seconds")]
    seconds = record.seconds
    assert record.peak_rss_mb > 50  # the interpreter, numpy and onnxruntime at least
    assert record.single_pass is False  # its mask reads level 2, its tiles level 0
    stages = ("open", "tissue_mask", "read", "inference", "outputs", "database", "total", "cpu")
    assert set(stages) <= set(seconds)
    assert all(seconds[stage] > 0 for stage in stages)
    assert seconds["inference"] <= seconds["tiles"] <= seconds["total"]
