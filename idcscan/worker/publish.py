"""`publish_job`: send a committed job's id to the workers. Light: imports Celery, not onnxruntime.

The caller commits the job row first, then publishes (ARCHITECTURE.md, principle 2). A publish
that fails or a message that gets lost is not fatal: the reconciler re-publishes queued jobs that
no worker started.
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import TYPE_CHECKING

from idcscan.core.settings import Settings

if TYPE_CHECKING:
    from idcscan.worker.celery_app import IdcscanCelery


@lru_cache(maxsize=8)
def _app_for(settings: Settings) -> IdcscanCelery:
    from idcscan.worker.celery_app import create_app

    return create_app(settings)


def publish_job(job_id: uuid.UUID, settings: Settings) -> None:
    """Queue job `job_id` for scoring (task `idcscan.score_job`, its only argument the id)."""
    from idcscan.worker.celery_app import SCORE_TASK

    _app_for(settings).send_task(
        SCORE_TASK,
        args=[str(job_id)],
        retry=True,
        retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
    )
