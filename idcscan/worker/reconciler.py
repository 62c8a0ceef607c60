"""The reconciler: the database is the source of truth, so what the broker lost is published again.

Run every `reconcile_interval_s` by `idcscan scheduler` (which `idcscan worker --beat` starts
beside the worker in the embedded mode):
- a `queued` job is published again when it never was (the API's publish failed) or its last
  publish is older than the broker's visibility window (the message may be lost), or, when the
  Redis queue is empty (FLUSHALL, a restart without its data), older than a lease; a job merely
  waiting in line is left alone, so a backlog is not delivered twice;
- a `running` job whose lease expired lost its worker: back to `queued` and published, or, out of
  attempts, `failed` as `worker_lost`.
Each change is one conditional UPDATE ... RETURNING in `idcscan.core.jobstate`, so concurrent
reconcilers do not double up; duplicate messages are harmless anyway (a worker claims a job only
once). A publish that fails is recorded, and the next round tries again.
Every `GC_INTERVAL_S` it also collects storage garbage (`idcscan.core.storage_gc`), and a thread
beside it sends the completion webhooks due (`idcscan.worker.webhooks`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from idcscan.core import jobstate
from idcscan.core.db import (
    make_engine,
    make_sessionmaker,
    transaction,
    utcnow,
)
from idcscan.core.settings import Settings
from idcscan.core.storage import Storage
from idcscan.core.storage_gc import GC_INTERVAL_S, collect_garbage
from idcscan.worker import webhooks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reconciled:
    republished: list[uuid.UUID]
    failed: list[uuid.UUID]


def reconcile(
    settings: Settings,
    sessions: sessionmaker[Session],
    publish: Callable[[uuid.UUID], None],
    queue_depth: Callable[[], int | None] = lambda: None,
) -> Reconciled:
    """One round. `queue_depth()` is the broker's count of waiting messages, None if unknown: an
    empty queue tells that jobs still queued after a lease lost their messages."""
    try:
        empty = queue_depth() == 0
    except Exception:
        log.warning("reconciler: the broker's queue depth is unknown", exc_info=True)
        empty = False
    now = utcnow()
    with transaction(sessions) as session:
        requeued, failed = jobstate.requeue_lost(
            session, max_attempts=settings.max_attempts, now=now
        )
        stale = jobstate.due_for_publish(
            session,
            window_s=settings.visibility_timeout_s,
            now=now,
            lost_after_s=settings.lease_s if empty else None,
        )
    republished, failed_to_publish = [], []
    for job_id in requeued + stale:
        try:
            publish(job_id)
            republished.append(job_id)
        except Exception:
            log.warning("reconciler: publishing job %s failed", job_id, exc_info=True)
            failed_to_publish.append(job_id)
    if failed_to_publish:
        with transaction(sessions) as session:
            jobstate.unpublished(session, failed_to_publish)
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
    every `gc_interval_s`; a failed round is logged, not fatal. Webhooks go out from a thread of
    their own, every `webhook_poll_s`, so that a slow receiver never delays a round."""
    from idcscan.broker import publish_job, queue_depth

    stop = stop or threading.Event()
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    storage = Storage(settings.storage)
    collected_at: float | None = None  # the first round collects, then every gc_interval_s
    log.info("reconciler: every %d s", settings.reconcile_interval_s)
    deliverer = threading.Thread(
        target=webhooks.run_forever,
        args=(settings, sessions, stop),
        name="idcscan-webhooks",
        daemon=True,  # a try cut short is safe: its claim runs out and it is sent again
    )
    deliverer.start()
    try:
        while not stop.wait(settings.reconcile_interval_s):
            try:
                reconcile(
                    settings,
                    sessions,
                    lambda job_id: publish_job(job_id, settings),
                    lambda: queue_depth(settings),
                )
            except Exception:
                log.exception("reconciler: round failed")
            if collected_at is None or time.monotonic() - collected_at >= gc_interval_s:
                collected_at = time.monotonic()
                try:
                    collect_garbage(storage, sessions)
                except Exception:
                    log.exception("storage gc: round failed")
    finally:
        stop.set()
        deliverer.join(timeout=2)
        engine.dispose()
