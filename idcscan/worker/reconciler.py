"""The reconciler: the database is the source of truth, so what the broker lost is published again.

Run every `reconcile_interval_s` by `idcscan scheduler` (which `idcscan worker --beat` starts
beside the worker in the embedded mode):
- a job committed as `queued` that no worker has touched for `lease_s` is published again (the
  API's publish may have failed, or the message was lost);
- a `running` job whose lease expired lost its worker: back to `queued` and published, or, out of
  attempts, `failed` as `worker_lost`.
Each change is one conditional UPDATE ... RETURNING, so concurrent reconcilers do not double up;
duplicate messages are harmless anyway (a worker claims a job only once).
Every `GC_INTERVAL_S` it also collects storage garbage (`idcscan.core.storage_gc`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from idcscan.core import jobstate
from idcscan.core.db import (
    Job,
    JobStatus,
    make_engine,
    make_sessionmaker,
    transaction,
    utcnow,
)
from idcscan.core.settings import Settings
from idcscan.core.storage import Storage
from idcscan.core.storage_gc import GC_INTERVAL_S, collect_garbage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reconciled:
    republished: list[uuid.UUID]
    failed: list[uuid.UUID]


def reconcile(
    settings: Settings, sessions: sessionmaker[Session], publish: Callable[[uuid.UUID], None]
) -> Reconciled:
    now = utcnow()
    with transaction(sessions) as session:
        requeued, failed = jobstate.requeue_lost(
            session, max_attempts=settings.max_attempts, now=now
        )
        stale = list(
            session.scalars(
                update(Job)
                .where(
                    Job.status == JobStatus.QUEUED.value,
                    Job.updated_at < now - timedelta(seconds=settings.lease_s),
                )
                .values(updated_at=now)
                .returning(Job.id)
            )
        )
    republished = requeued + stale
    for job_id in republished:
        publish(job_id)
    if republished or failed:
        log.info(
            "reconciler: republished %d jobs, failed %d out of attempts",
            len(republished),
            len(failed),
        )
    return Reconciled(republished=republished, failed=failed)


def run_forever(
    settings: Settings, stop: threading.Event | None = None, gc_interval_s: float = GC_INTERVAL_S
) -> None:
    """Reconcile every `reconcile_interval_s` until `stop` is set, and collect storage garbage
    every `gc_interval_s`; a failed round is logged, not fatal."""
    from idcscan.broker import publish_job

    stop = stop or threading.Event()
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    storage = Storage(settings.storage)
    collected_at: float | None = None  # the first round collects, then every gc_interval_s
    log.info("reconciler: every %d s", settings.reconcile_interval_s)
    try:
        while not stop.wait(settings.reconcile_interval_s):
            try:
                reconcile(settings, sessions, lambda job_id: publish_job(job_id, settings))
            except Exception:
                log.exception("reconciler: round failed")
            if collected_at is None or time.monotonic() - collected_at >= gc_interval_s:
                collected_at = time.monotonic()
                try:
                    collect_garbage(storage, sessions)
                except Exception:
                    log.exception("storage gc: round failed")
    finally:
        engine.dispose()
