"""What must hold after any fault: the campaign's checker, asserted by every fault test that runs
jobs to their end."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Collection
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from idcscan.core import jobstate
from idcscan.core.db import (
    ConfusionStat,
    Job,
    JobStatus,
    SlideResult,
    TileScore,
    WebhookDelivery,
)
from idcscan.core.settings import Settings
from idcscan.core.storage import Storage


def assert_consistent(
    settings: Settings,
    sessions: sessionmaker[Session],
    accepted: Collection[uuid.UUID],
    worker_log: Path | None = None,
) -> None:
    """Every accepted job terminal; attempts within the cap; a succeeded job has exactly its
    tile rows (one per grid position) and one summary, any other none; no result files but
    those of succeeded jobs; a job naming a callback has exactly one webhook of its ending in the
    outbox; and, from the worker's log, no job succeeded twice."""
    storage = Storage(settings.storage)
    with sessions() as session:
        jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(accepted)))}
        assert set(jobs) == set(accepted), "an accepted job has no row"
        tiles = dict(
            session.execute(
                select(TileScore.job_id, func.count())
                .where(TileScore.job_id.in_(accepted))
                .group_by(TileScore.job_id)
            ).all()
        )
        summaries = Counter(
            session.scalars(select(SlideResult.job_id).where(SlideResult.job_id.in_(accepted)))
        )
        stats = Counter(
            session.scalars(select(ConfusionStat.job_id).where(ConfusionStat.job_id.in_(accepted)))
        )
        webhooks = {
            row.job_id: row.event
            for row in session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.job_id.in_(accepted))
            )
        }
    for job_id, job in jobs.items():
        status = JobStatus(job.status)
        assert status.finished, f"job {job_id} is still {status}"
        assert job.attempts <= settings.max_attempts, f"job {job_id}: {job.attempts} attempts"
        assert job.lease_owner is None and job.lease_expires_at is None, f"job {job_id} leased"
        has_files = storage.exists(jobstate.results_prefix(job_id))
        if job.callback_url is not None:
            assert webhooks.get(job_id) == f"job.{status}", f"job {job_id}: its webhook"
        else:
            assert job_id not in webhooks, f"job {job_id} has a webhook it did not ask for"
        if status == JobStatus.SUCCEEDED:
            assert tiles.get(job_id, 0) == job.tiles_total, f"job {job_id}: tile rows"
            assert summaries[job_id] == 1, f"job {job_id}: {summaries[job_id]} summaries"
            assert has_files, f"job {job_id} succeeded without its files"
        else:
            assert tiles.get(job_id, 0) == summaries[job_id] == stats[job_id] == 0, job_id
            assert not has_files, f"job {job_id} ({status}) left result files"
    results = Path(storage.uri("results"))
    if results.is_dir():
        orphans = {p.name for p in results.iterdir()} - {str(j) for j in jobs}
        assert not orphans, f"result files of no accepted job: {sorted(orphans)}"
    if worker_log is not None:
        succeeded = Counter(
            re.findall(r"job ([0-9a-f-]{36}): succeeded", worker_log.read_text(errors="replace"))
        )
        twice = [job_id for job_id, n in succeeded.items() if n > 1]
        assert not twice, f"jobs committed as succeeded more than once: {twice}"


def deliveries(worker_log: Path) -> int:
    """How many task messages the worker took, claimed or skipped (from its log)."""
    text = worker_log.read_text(errors="replace")
    return len(re.findall(r"job [0-9a-f-]{36}: (?:claimed by|not claimable)", text))
