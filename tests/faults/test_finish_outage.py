"""A PostgreSQL blip while the worker commits a job's results: the job is retried, not failed.

The cluster is the test's own; it is crashed (`pg_ctl stop -m immediate`) the moment the worker
sends its final UPDATE, and started again a second later, as a failover or a restart would.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine

from idcscan.core.db import Job, JobStatus, SlideResult, TileScore, make_engine, make_sessionmaker
from idcscan.core.migrate import upgrade
from idcscan.core.settings import Settings, get_settings
from idcscan.core.storage import Storage
from idcscan.worker.jobs import JobRunner, results_prefix
from idcscan.worker.modelcache import ModelCache
from tests.conftest import SAMPLE_PATIENTS
from tests.faults.servers import PostgresCluster

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.fixture
def settings(own_postgres: tuple[PostgresCluster, str], tmp_path: Path) -> Settings:
    _cluster, url = own_postgres
    upgrade(url)
    return get_settings(data_dir=tmp_path / "data", database_url=url, lease_s=10, batch_size=64)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database)
    yield engine
    engine.dispose()


def crash_on_final_commit(engine: Engine, cluster: PostgresCluster, down_s: float) -> list[float]:
    """Crash the cluster when `engine` sends the UPDATE that marks a job succeeded; start it
    again `down_s` later. Returns the times of the crashes (one expected)."""
    crashes: list[float] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _crash(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if crashes or not statement.startswith("UPDATE jobs"):
            return
        values = params.values() if isinstance(params, dict) else params
        if JobStatus.SUCCEEDED.value not in values:
            return
        crashes.append(time.monotonic())
        cluster.stop("immediate")
        threading.Timer(down_s, cluster.start).start()

    return crashes


def test_blip_during_the_final_commit_is_retried_not_failed(
    settings: Settings,
    engine: Engine,
    own_postgres: tuple[PostgresCluster, str],
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
) -> None:
    cluster, _url = own_postgres
    job_id = make_job(settings)(str(SAMPLE_PATIENTS / "8916"))
    sessions = make_sessionmaker(engine)
    runner = JobRunner(settings, sessions, ModelCache(settings, threads=1))
    crashes = crash_on_final_commit(engine, cluster, down_s=1.5)

    outcome = runner.run(job_id)

    assert len(crashes) == 1, "the fault was not injected"
    assert outcome == "succeeded"
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        # The attempt was not spent on our own outage, and the job did not fail.
        assert job.status == JobStatus.SUCCEEDED and job.error_kind is None
        assert job.attempts == 1 and job.lease_owner is None
        tiles = session.scalar(
            select(func.count()).select_from(TileScore).where(TileScore.job_id == job_id)
        )
        assert tiles == job.tiles_total > 0
        assert session.get(SlideResult, job_id) is not None
    assert Storage(settings.storage).exists(f"{results_prefix(job_id)}/heatmap.png")


def test_outage_longer_than_the_lease_leaves_the_job_to_the_reconciler(
    settings: Settings,
    engine: Engine,
    own_postgres: tuple[PostgresCluster, str],
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
) -> None:
    from idcscan.worker.reconciler import reconcile

    cluster, _url = own_postgres
    short = settings.model_copy(update={"lease_s": 1})
    job_id = make_job(short)(str(SAMPLE_PATIENTS / "8916"))
    sessions = make_sessionmaker(engine)
    runner = JobRunner(short, sessions, ModelCache(short, threads=1))
    crash_on_final_commit(engine, cluster, down_s=3)

    # The worker tries for a lease's length, then gives the job up without failing it, and
    # removes the files it wrote: nothing of the attempt is left to orphan.
    assert runner.run(job_id) in ("released", "deferred")
    assert not Storage(short.storage).exists(results_prefix(job_id))
    deadline = time.monotonic() + 30
    while not cluster.running() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(short.lease_s)
    reconcile(short, sessions, lambda _job_id: None)  # requeues the job if its lease ran out
    assert runner.run(job_id) == "succeeded"
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.SUCCEEDED and job.error_kind is None
        assert job.attempts <= 2
