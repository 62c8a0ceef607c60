"""Through a real Celery worker (`idcscan worker` as a subprocess): Redis + PostgreSQL, and the
embedded default (SQLite database, Celery's SQL transport over SQLite). Includes a worker killed
in the middle of a job."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from idcscan.broker import publish_job
from idcscan.core.assemble import write_pyramid
from idcscan.core.db import Job, JobStatus, SlideResult, TileScore, make_engine, make_sessionmaker
from idcscan.core.migrate import upgrade
from idcscan.core.settings import get_settings
from tests.conftest import SAMPLE_PATIENTS
from tests.processes import idcscan_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JobMaker = Callable[..., uuid.UUID]


@contextmanager
def running_worker(
    env: dict[str, str], log: Path, *extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    with idcscan_process(["worker", "--concurrency=1", *extra], env, log) as process:
        yield process


def wait_for(sessions, job_id: uuid.UUID, predicate, timeout: float, log: Path) -> Job:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as session:
            job = session.get(Job, job_id)
            if job is not None and predicate(job):
                return job
        time.sleep(0.05)
    pytest.fail(
        f"job {job_id} did not get there in {timeout} s; worker log:\n{log.read_text()[-3000:]}"
    )


def _environment(tmp_path: Path, database_url: str, broker_url: str | None) -> dict[str, str]:
    env = {
        "IDCSCAN_DATA_DIR": str(tmp_path / "data"),
        "IDCSCAN_DATABASE_URL": database_url,
        "IDCSCAN_LEASE_S": "5",
        "IDCSCAN_RECONCILE_INTERVAL_S": "1",
        "IDCSCAN_INFERENCE_THREADS": "1",
        "IDCSCAN_LOG_LEVEL": "INFO",
    }
    if broker_url:
        env["IDCSCAN_BROKER_URL"] = broker_url
    return env


def _settings(env: dict[str, str]):  # type: ignore[no-untyped-def]
    return get_settings(
        data_dir=Path(env["IDCSCAN_DATA_DIR"]),
        database_url=env["IDCSCAN_DATABASE_URL"],
        broker_url=env.get("IDCSCAN_BROKER_URL"),
        lease_s=5,
    )


def _count_tiles(sessions, job_id: uuid.UUID) -> int:  # type: ignore[no-untyped-def]
    with sessions() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(TileScore).where(TileScore.job_id == job_id)
            )
            or 0
        )


# kombu's SQL transport declares its tables with lazy="noload", deprecated in SQLAlchemy 2.1;
# the warning comes from kombu's models, not from idcscan, and changes nothing here.
KOMBU_NOLOAD = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning"
)


@pytest.mark.parametrize("mode", ["redis+postgresql", pytest.param("embedded", marks=KOMBU_NOLOAD)])
def test_job_through_a_real_worker(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, make_job: Callable[..., JobMaker]
) -> None:
    if mode == "embedded":
        env = _environment(tmp_path, f"sqlite:///{tmp_path / 'data' / 'idcscan.sqlite3'}", None)
    else:
        env = _environment(
            tmp_path, request.getfixturevalue("postgres_url"), request.getfixturevalue("redis_url")
        )
    settings = _settings(env)
    upgrade(settings.database)
    job_id = make_job(settings)(str(SAMPLE_PATIENTS / "8916"))
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    log = tmp_path / "worker.log"
    try:
        with running_worker(env, log):
            publish_job(job_id, settings)
            done = wait_for(sessions, job_id, lambda j: JobStatus(j.status).finished, 60, log)
        assert done.status == JobStatus.SUCCEEDED, done.error_message
        assert (
            done.attempts == 1
            and done.tiles_done == done.tiles_total == _count_tiles(sessions, job_id) > 0
        )
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def long_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tissue-coloured 4000 x 4000 px pyramid at 4 um/px: 6,400 tiles, a few seconds to score."""
    rng = np.random.default_rng(0)
    pixels = np.empty((4000, 4000, 3), np.uint8)
    pixels[...] = (200, 110, 160)
    pixels[::7, ::3] = rng.integers(60, 200, (pixels[::7, ::3].shape), dtype=np.uint8)
    path = tmp_path_factory.mktemp("long") / "long.tiff"
    write_pyramid(pixels, path, mpp=4.0)
    return path


def test_worker_killed_mid_job_finishes_once(
    postgres_url: str,
    redis_url: str,
    tmp_path: Path,
    make_job: Callable[..., JobMaker],
    long_slide: Path,
) -> None:
    env = {**_environment(tmp_path, postgres_url, redis_url), "IDCSCAN_BATCH_SIZE": "8"}
    settings = _settings(env)
    upgrade(settings.database)
    job_id = make_job(settings)(str(long_slide))
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    log = tmp_path / "worker.log"
    try:
        with running_worker(env, log):
            publish_job(job_id, settings)
            running = wait_for(
                sessions,
                job_id,
                lambda j: j.tiles_done and j.tiles_done < (j.tiles_total or 0) // 2,
                60,
                log,
            )
            # The lease names the pool process that runs the job: kill it mid-job, as the OOM
            # killer or a crashing decoder would.
            child = int((running.lease_owner or "").split(":")[1])
            os.kill(child, signal.SIGKILL)
            # Then take the whole worker down without a goodbye.
            time.sleep(0.5)
        with running_worker(env, log, "--beat"):
            done = wait_for(sessions, job_id, lambda j: JobStatus(j.status).finished, 90, log)
        assert done.status == JobStatus.SUCCEEDED, done.error_message
        assert done.attempts == 2
        tiles = _count_tiles(sessions, job_id)
        with sessions() as session:
            result = session.get(SlideResult, job_id)
            assert result is not None
        assert tiles == done.tiles_total == result.tissue_tiles == 6400
    finally:
        engine.dispose()
