"""The job queue between the API and the workers: the Celery app built from the core settings,
with every reliability setting in one place; `publish_job`, which the API (after committing a
job) and the reconciler call; `queue_depth` for the reconciler and `ping_broker` for the API's
readiness. It lives beside `cli.py`, outside both parts, because both use it;
it imports Celery, never onnxruntime.

Why each setting (see docs/ARCHITECTURE.md, principle 3):
- `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only after its job
  finished; a worker killed mid-job gives it back to the queue. The attempt cap lives in the
  database (`jobs.attempts`), so a slide that kills every worker ends as `worker_lost`.
- `worker_prefetch_multiplier=1`: a worker holds one job at a time, others stay in the queue.
- soft limit (90%) below the hard limit, the broker's visibility timeout above it: a slow job is
  stopped cleanly first and never redelivered while it still runs (Redis; the embedded SQL
  transport has no visibility timeout, see `transport_options`).
- running jobs survive a lost broker connection (not cancelled): Redis restarting costs no job
  an attempt; the unacked message comes back and is skipped, the job being finished.
- no result backend: results live in the database, tasks return nothing.
- JSON only: tasks carry a job id, never pickled objects.
- the embedded SQL transport polls its queue every `SQL_POLL_S` instead of kombu's second
  (`SqlTransport`): the wait for a free worker to notice a job is part of every job's time.
"""

from __future__ import annotations

import logging
import uuid
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu.transport import sqlalchemy as kombu_sql
from sqlalchemy.exc import IntegrityError

from idcscan.core.settings import Settings, get_settings

log = logging.getLogger(__name__)

SCORE_TASK = "idcscan.score_job"
QUEUE = "idcscan"
# kombu's Redis clients wait for an answer for ever by default: a frozen Redis (its port still
# open, nothing answering: a paused container, a host swapping) would hold a submit's publish,
# the reconciler and the API's readiness with it. 5 s is redis-py's own default for its clients;
# the consumer's blocking reads return every second, well within it.
REDIS_TIMEOUTS = {"socket_timeout": 5, "socket_connect_timeout": 5}
SQL_POLL_S = 0.1


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
        # A lost broker connection must not kill running jobs: each would lose an attempt to an
        # outage of ours. The job goes on and finishes in the database; its message, whose ack
        # cannot reach the new connection, is redelivered and skipped (the job is finished).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
    }


def transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker.startswith("sqla+"):
        # The SQL transport passes its options to create_engine and has no visibility timeout:
        # a message held by a dead worker is not redelivered by the broker. The reconciler
        # re-publishes the job from the database instead (lease expired -> queued).
        return {"connect_args": {"timeout": 30}} if "sqlite" in settings.broker else {}
    return {"visibility_timeout": settings.visibility_timeout_s, **REDIS_TIMEOUTS}


class SqlChannel(kombu_sql.Channel):
    """Kombu's SQL channel, creating a queue's row safely across processes.

    On a new broker file the API's first publish and a worker that is just starting may both
    find the queue missing and insert it. kombu guards that race between threads only: the
    process that loses it gets an IntegrityError, which is not a connection error to Celery, so a
    worker losing it stopped and left the job queued. The loser reads the winner's row instead.
    """

    def _get_or_create(self, queue: str) -> Any:
        try:
            return super()._get_or_create(queue)
        except IntegrityError:
            self.session.rollback()
            return super()._get_or_create(queue)


class SqlTransport(kombu_sql.Transport):
    """Kombu's SQL transport, polling every `SQL_POLL_S` (0.1 s) instead of every second.

    An idle worker finds its next job only at its next poll: with kombu's 1 s, a job waited
    half a second on average before a free worker picked it up, 7-17% of the reference model's
    submit-to-result time on the full-size slide. An empty poll of the SQLite file costs about
    2 ms of CPU and holds its write lock (`BEGIN IMMEDIATE`) for a moment; at 0.1 s a consumer
    waiting on an empty queue takes about 1.7% of one core instead of 0.2%, and a message waits
    0.07 s instead of 0.45 s (benchmarks/sql_poll.py). 0.05 s would double that cost to save
    some 0.03 s a job; 0.2 s would double the wait. kombu's `polling_interval` transport option
    cannot say this: the SQL transport hands its options to `create_engine`, which refuses
    unknown ones.
    """

    Channel = SqlChannel
    polling_interval = SQL_POLL_S


def broker_connection(broker: str) -> tuple[str, type[SqlTransport] | None]:
    """The URL Celery connects to and the transport class it connects with (None: the URL's).

    kombu takes the transport of a `sqla+` URL from its prefix, before any `transport`
    argument; without the prefix, Celery's `broker_transport` setting selects `SqlTransport`.
    """
    if broker.startswith("sqla+"):
        return broker.removeprefix("sqla+"), SqlTransport
    return broker, None


class IdcscanCelery(Celery):
    """A Celery app that carries the settings it was built from."""

    settings: Settings


def create_app(settings: Settings | None = None) -> IdcscanCelery:
    settings = settings or get_settings()
    broker = settings.broker
    if broker.startswith("sqla+sqlite"):
        # The embedded broker's file lives in data_dir; SQLite needs its folder to exist.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    url, transport = broker_connection(broker)
    app = IdcscanCelery("idcscan", broker=url, set_as_current=False)
    app.settings = settings
    app.conf.update(reliability(settings), broker_transport=transport)
    return app


@lru_cache(maxsize=8)
def _app_for(settings: Settings) -> IdcscanCelery:
    return create_app(settings)


def publish_job(job_id: uuid.UUID, settings: Settings) -> None:
    """Queue job `job_id` for scoring (task `idcscan.score_job`, its only argument the id).

    The caller commits the job row first, then publishes (docs/ARCHITECTURE.md, principle 2). A publish
    that fails or a message that gets lost is not fatal: the reconciler re-publishes queued jobs
    that no worker started.
    """
    _app_for(settings).send_task(
        SCORE_TASK,
        args=[str(job_id)],
        retry=True,
        retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
    )


def queue_depth(settings: Settings) -> int | None:
    """Messages waiting in the scoring queue of a Redis broker; None for the embedded SQL
    broker, whose messages live in its SQLite file and are lost only with it.

    Redis can lose what it holds (FLUSHALL, a restart without its append-only file): a queued
    job then waits in vain. When the queue is empty, the reconciler knows that every job still
    queued after a lease has lost its message, instead of waiting out the visibility window.
    """
    if not settings.broker_is_redis:
        return None
    from kombu import Connection

    with (
        Connection(settings.broker, transport_options=REDIS_TIMEOUTS) as connection,
        connection.channel() as channel,
    ):
        # Not passive: a Redis queue that lost its key reads as empty, not as an error.
        return int(channel.queue_declare(QUEUE).message_count)


def ping_broker(settings: Settings) -> None:
    """Raise when the broker does not answer within two seconds (the API's `/readyz`, which a
    container healthcheck gives 5 s)."""
    from kombu import Connection

    options = {"socket_timeout": 2, "socket_connect_timeout": 2} if settings.broker_is_redis else {}
    with Connection(settings.broker, connect_timeout=2, transport_options=options) as connection:
        connection.ensure_connection(max_retries=1, timeout=2)
