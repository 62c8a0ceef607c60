"""The Celery task: a thin wrapper that takes a job id and hands it to `JobRunner`.

Per-process state (database engine, model cache) is created by `worker_process_init`, after the
fork, so no onnxruntime session or database connection is shared between processes.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init

from idcscan.broker import SCORE_TASK
from idcscan.core.db import Model, make_engine, make_sessionmaker
from idcscan.core.settings import Settings
from idcscan.worker.jobs import JobRunner
from idcscan.worker.modelcache import ModelCache

log = logging.getLogger(__name__)

_runner: JobRunner | None = None


def inference_threads(settings: Settings, concurrency: int) -> int:
    """Intra-op threads per worker process: the CPUs shared so that processes do not fight."""
    if settings.inference_threads:
        return settings.inference_threads
    return max(1, (os.cpu_count() or 1) // max(1, concurrency))


def _settings(task: Task) -> Settings:
    return task.app.settings


def build_runner(
    settings: Settings, concurrency: int, on_hang: Callable[[], None] | None = None
) -> JobRunner:
    sessions = make_sessionmaker(make_engine(settings.database))
    models = ModelCache(settings, inference_threads(settings, concurrency))
    return JobRunner(
        settings, sessions, models, timeout_errors=(SoftTimeLimitExceeded,), on_hang=on_hang
    )


def _end_this_pool_process() -> None:
    """A slide's reader is stuck in a system or C call past its deadline, its job already ended
    as `timeout`: only ending the process frees the slot. The pool starts a new process; the
    message goes back to the queue (reject on worker lost) and is skipped (the job is over)."""
    os.kill(os.getpid(), signal.SIGKILL)


@worker_process_init.connect
def _init_process(sender: Any = None, **_: Any) -> None:
    """In each pool process, after the fork: the database engine and the active model's session."""
    from celery import current_app

    global _runner
    settings = getattr(current_app, "settings", None)
    if settings is None:
        return
    # A pool process may end itself when a reader hangs; the solo pool's process is the worker.
    _runner = build_runner(
        settings, int(current_app.conf.worker_concurrency or 1), on_hang=_end_this_pool_process
    )
    with _runner.sessions() as session:
        active = session.query(Model).filter(Model.active.is_(True)).one_or_none()
        location = active.location if active is not None else None
        variants = active.variants if active is not None else None
    if location:
        try:
            _runner.models.get(location, variants)
        except Exception:  # a broken registry entry fails the jobs that use it, not the worker
            log.exception("could not load the active model")


def _get_runner(task: Task) -> JobRunner:
    global _runner
    if _runner is None:  # solo pool or eager mode: no worker_process_init
        _runner = build_runner(_settings(task), 1)
    return _runner


@shared_task(name=SCORE_TASK, bind=True)
def score_job(self: Task, job_id: str) -> None:
    _get_runner(self).run(uuid.UUID(job_id))
