"""A job's life in one place: every change of a job's status is one conditional UPDATE here.

The moves, and who makes them (the database is the truth; the broker only carries ids):

    queued  --claim (worker)------------------> running      attempts + 1, a lease
    running --renew (worker's heartbeat)------> running      lease extended, progress written
    running --finish (worker)-----------------> succeeded | failed
    running --release (worker, our outage)----> queued       the attempt refunded
    running --lease ran out (reconciler)------> queued, or failed as worker_lost when the
                                                 attempts are spent (also at the next claim)
    queued | running --cancel (API)-----------> cancelled
    queued  --publish again (reconciler)------> queued       only when the last publish is
                                                 older than the broker's visibility window

Each move names the state it starts from in its WHERE clause, so two actors racing for one job
cannot both win: the loser's UPDATE changes no row, and it reads the state the winner left.
Every terminal state clears the lease and sets `finished_at` (`ended`); only `succeeded` keeps
results: `clears_results` says which statuses must leave no result rows and no result files.
Every move into a terminal state also writes the job's completion webhook into the outbox
(`announce`), in the same transaction: the job cannot end without its webhook row, nor the row
exist for a job that did not end.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, insert, select, update
from sqlalchemy.orm import Session

from idcscan.core.db import (
    ConfusionStat,
    DeliveryStatus,
    ErrorKind,
    Job,
    JobStatus,
    SlideResult,
    TileScore,
    WebhookDelivery,
)

UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
# Tables holding a job's results; a job that did not succeed has no row in any of them.
RESULT_TABLES = (TileScore, SlideResult, ConfusionStat)


def results_prefix(job_id: uuid.UUID) -> str:
    """Where a job's result files live in storage (heatmap, GeoJSON, tile CSV)."""
    return f"results/{job_id}"


def clears_results(status: JobStatus | str) -> bool:
    """Whether a job in `status` must hold no result rows and no result files: every ending but
    success (a failed or cancelled job's partial output is nobody's result)."""
    return JobStatus(status) in (JobStatus.FAILED, JobStatus.CANCELLED)


def ended(status: JobStatus, now: datetime, **values: Any) -> dict[str, Any]:
    """The values every move into a terminal state writes: the lease cleared, the end time."""
    assert status.finished, status
    return {
        "status": status.value,
        "lease_owner": None,
        "lease_expires_at": None,
        "finished_at": now,
        "updated_at": now,
        **values,
    }


def announce(session: Session, job_ids: list[uuid.UUID], status: JobStatus, now: datetime) -> None:
    """The outbox rows of jobs that just ended as `status`: one per job that names a callback,
    due at once. Called by every move into a terminal state, inside its transaction."""
    assert status.finished, status
    if not job_ids:
        return
    callbacks = session.execute(
        select(Job.id, Job.callback_url).where(Job.id.in_(job_ids), Job.callback_url.is_not(None))
    ).all()
    if callbacks:
        session.execute(
            insert(WebhookDelivery),
            [
                {
                    "job_id": job_id,
                    "url": url,
                    "event": f"job.{status.value}",
                    "status": DeliveryStatus.PENDING.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for job_id, url in callbacks
            ],
        )


def out_of_attempts(max_attempts: int, now: datetime) -> dict[str, Any]:
    """The ending of a job whose worker was lost on every attempt."""
    return ended(
        JobStatus.FAILED,
        now,
        error_kind=ErrorKind.WORKER_LOST.value,
        error_message=f"the worker was lost {max_attempts} times while scoring this slide",
    )


def lease_ran_out(now: datetime) -> ColumnElement[bool]:
    return (Job.status == JobStatus.RUNNING.value) & (Job.lease_expires_at < now)


def claimable(now: datetime) -> ColumnElement[bool]:
    """Queued, or running under a lease that ran out (its worker is gone)."""
    return (Job.status == JobStatus.QUEUED.value) | lease_ran_out(now)


def held_by(job_id: uuid.UUID, owner: str) -> ColumnElement[bool]:
    """The job is running under `owner`'s lease: a cancel or a takeover ends that."""
    return (Job.id == job_id) & (Job.lease_owner == owner) & (Job.status == JobStatus.RUNNING.value)


def _changed(result: Any) -> bool:
    return bool(result.rowcount)


def claim(
    session: Session,
    job_id: uuid.UUID,
    owner: str,
    *,
    lease_s: int,
    max_attempts: int,
    now: datetime,
) -> bool:
    """Take the job for `owner` if it is claimable and attempts remain. A job out of attempts
    is ended as `worker_lost` instead (every earlier attempt lost its worker)."""
    taken = _changed(
        session.execute(
            update(Job)
            .where(Job.id == job_id, claimable(now), Job.attempts < max_attempts)
            .values(
                status=JobStatus.RUNNING.value,
                attempts=Job.attempts + 1,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_s),
                tiles_done=0,
                error_kind=None,
                error_message=None,
                updated_at=now,
            )
        )
    )
    if not taken:
        spent = list(
            session.scalars(
                update(Job)
                .where(Job.id == job_id, claimable(now), Job.attempts >= max_attempts)
                .values(**out_of_attempts(max_attempts, now))
                .returning(Job.id)
            )
        )
        announce(session, spent, JobStatus.FAILED, now)
    return taken


def renew(
    session: Session,
    job_id: uuid.UUID,
    owner: str,
    *,
    lease_s: int,
    now: datetime,
    tiles_done: int,
    tiles_total: int | None,
) -> bool:
    """Extend `owner`'s lease and write progress; False when the job was cancelled or taken
    over (the worker stops)."""
    return _changed(
        session.execute(
            update(Job)
            .where(held_by(job_id, owner))
            .values(
                tiles_done=tiles_done,
                tiles_total=tiles_total,
                lease_expires_at=now + timedelta(seconds=lease_s),
            )
        )
    )


def finish(
    session: Session,
    job_id: uuid.UUID,
    owner: str,
    status: JobStatus,
    *,
    now: datetime,
    **values: Any,
) -> bool:
    """End the job as `status` if `owner` still holds it; the row stays locked until commit, so
    a cancel arriving now waits and then finds the job finished. A job that ends without
    success loses its result rows in the same transaction."""
    if not _changed(
        session.execute(
            update(Job).where(held_by(job_id, owner)).values(**ended(status, now, **values))
        )
    ):
        return False
    announce(session, [job_id], status, now)
    if clears_results(status) or status == JobStatus.SUCCEEDED:
        # Failed: nothing of it is kept. Succeeded: the caller writes the results next, and a
        # rerun replaces what an earlier attempt wrote, never adds to it.
        clear_result_rows(session, job_id)
    return True


def release(session: Session, job_id: uuid.UUID, owner: str, *, now: datetime) -> bool:
    """Give `owner`'s job back to the queue with its attempt refunded: it could not finish for
    an outage of our own, which is not the slide's fault."""
    return _changed(
        session.execute(
            update(Job)
            .where(held_by(job_id, owner))
            .values(
                status=JobStatus.QUEUED.value,
                attempts=Job.attempts - 1,
                lease_owner=None,
                lease_expires_at=None,
                tiles_done=0,
                updated_at=now,
                published_at=None,  # its message was taken: the reconciler publishes it again
            )
        )
    )


def cancel(session: Session, job_id: uuid.UUID, *, now: datetime) -> bool:
    """Cancel a queued or running job; False when it had already ended (the caller reads which
    way with `status_of`). A running worker notices at its next heartbeat or at its finish, and
    removes the files it wrote."""
    changed = _changed(
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(UNFINISHED))
            .values(**ended(JobStatus.CANCELLED, now))
            .execution_options(synchronize_session=False)
        )
    )
    if changed:
        clear_result_rows(session, job_id)
        announce(session, [job_id], JobStatus.CANCELLED, now)
    return changed


def requeue_lost(
    session: Session, *, max_attempts: int, now: datetime
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Jobs whose lease ran out lost their worker: out of attempts they fail as `worker_lost`,
    the others go back to the queue. Returns (requeued, failed)."""
    failed = list(
        session.scalars(
            update(Job)
            .where(lease_ran_out(now), Job.attempts >= max_attempts)
            .values(**out_of_attempts(max_attempts, now))
            .returning(Job.id)
        )
    )
    announce(session, failed, JobStatus.FAILED, now)
    requeued = list(
        session.scalars(
            update(Job)
            .where(lease_ran_out(now))
            .values(
                status=JobStatus.QUEUED.value,
                lease_owner=None,
                lease_expires_at=None,
                updated_at=now,
                published_at=now,  # the caller publishes it
            )
            .returning(Job.id)
        )
    )
    return requeued, failed


def due_for_publish(
    session: Session, *, window_s: int, now: datetime, lost_after_s: int | None = None
) -> list[uuid.UUID]:
    """Queued jobs whose message may be lost, marked as published now (the caller publishes
    them): never published (the API's publish failed) or last published longer ago than the
    broker's visibility window. A job only waiting in line behind others is left alone: its
    message is in the queue, and another would be a duplicate delivery. `lost_after_s` is given
    when the broker's queue is known to be empty: then every job published longer ago than that
    lost its message (a worker claims a job within moments of taking its message)."""
    age_s = window_s if lost_after_s is None else min(window_s, lost_after_s)
    return list(
        session.scalars(
            update(Job)
            .where(
                Job.status == JobStatus.QUEUED.value,
                Job.published_at.is_(None) | (Job.published_at < now - timedelta(seconds=age_s)),
            )
            .values(published_at=now)
            .returning(Job.id)
        )
    )


def unpublished(session: Session, job_ids: list[uuid.UUID]) -> None:
    """Record that publishing these jobs failed: the reconciler's next round tries again."""
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(published_at=None))


def status_of(session: Session, job_id: uuid.UUID) -> JobStatus | None:
    """The job's status as committed now (a fresh read, not the session's copy)."""
    status = session.scalar(
        select(Job.status).where(Job.id == job_id).execution_options(populate_existing=True)
    )
    return JobStatus(status) if status is not None else None


def clear_result_rows(session: Session, job_id: uuid.UUID) -> None:
    for table in RESULT_TABLES:
        session.execute(delete(table).where(table.job_id == job_id))
