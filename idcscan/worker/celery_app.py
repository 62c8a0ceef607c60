"""The Celery app, built from the core settings, with every reliability setting in one place.

Why each setting (see ARCHITECTURE.md, principle 3):
- `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only after its job
  finished; a worker killed mid-job gives it back to the queue. The attempt cap lives in the
  database (`jobs.attempts`), so a slide that kills every worker ends as `worker_lost`.
- `worker_prefetch_multiplier=1`: a worker holds one job at a time, others stay in the queue.
- soft limit (90%) below the hard limit, the broker's visibility timeout above it: a slow job is
  stopped cleanly first and never redelivered while it still runs (Redis; the embedded SQL
  transport has no visibility timeout, see `transport_options`).
- no result backend: results live in the database, tasks return nothing.
- JSON only: tasks carry a job id, never pickled objects.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery

from idcscan.core.settings import Settings, get_settings

log = logging.getLogger(__name__)

SCORE_TASK = "idcscan.score_job"
QUEUE = "idcscan"


def reliability(settings: Settings) -> dict[str, Any]:
    """Every setting that makes a job run to completion once in effect."""
    return {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        "broker_transport_options": transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
    }


def transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker.startswith("sqla+"):
        # The SQL transport passes its options to create_engine and has no visibility timeout:
        # a message held by a dead worker is not redelivered by the broker. The reconciler
        # re-publishes the job from the database instead (lease expired -> queued).
        return {"connect_args": {"timeout": 30}} if "sqlite" in settings.broker else {}
    return {"visibility_timeout": settings.visibility_timeout_s}


class IdcscanCelery(Celery):
    """A Celery app that carries the settings it was built from."""

    settings: Settings


def create_app(settings: Settings | None = None) -> IdcscanCelery:
    settings = settings or get_settings()
    broker = settings.broker
    if broker.startswith("sqla+sqlite"):
        # The embedded broker's file lives in data_dir; SQLite needs its folder to exist.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = IdcscanCelery("idcscan", broker=broker, set_as_current=False)
    app.settings = settings
    app.conf.update(reliability(settings))
    return app


def inference_threads(settings: Settings, concurrency: int) -> int:
    """Intra-op threads per worker process: the CPUs shared so that processes do not fight."""
    if settings.inference_threads:
        return settings.inference_threads
    return max(1, (os.cpu_count() or 1) // max(1, concurrency))
