"""`idcscan api`: the app under gunicorn, threaded workers, one app per worker (after the fork)."""

from __future__ import annotations

import logging
import multiprocessing
from typing import Any

from gunicorn.app.base import BaseApplication

from idcscan.core.settings import Settings

log = logging.getLogger(__name__)


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _shared_storage(settings: Settings) -> bool:
    return not settings.rate_limit_storage_url.startswith("memory://")


def api_processes(settings: Settings, asked: int) -> int:
    """How many gunicorn workers to run: `asked`, or by default 2 x CPUs + 1 (at most 8), or one
    when rate limits could only be counted in each process's memory."""
    if asked:
        return asked
    if not _shared_storage(settings) and not settings.broker_is_redis:
        log.info("one API process: rate limits are counted in its memory (embedded mode)")
        return 1
    return min(2 * multiprocessing.cpu_count() + 1, 8)


def shared_rate_limits(settings: Settings, workers: int) -> Settings:
    """Settings whose rate limits hold across `workers` API processes.

    With memory:// each process counts apart, so N processes would allow N times every limit.
    The broker's Redis, when there is one, is shared storage that is already there; without it,
    more than one process is refused rather than run with limits that do not hold.
    """
    if workers <= 1 or _shared_storage(settings):
        return settings
    if settings.broker_is_redis:
        log.warning(
            "IDCSCAN_RATE_LIMIT_STORAGE_URL is memory://, which %d API processes would each "
            "count apart; counting rate limits in the broker's Redis instead",
            workers,
        )
        return settings.model_copy(update={"rate_limit_storage_url": settings.broker})
    raise ValueError(
        f"{workers} API processes would each count rate limits apart (memory://): set "
        "IDCSCAN_RATE_LIMIT_STORAGE_URL to a redis:// URL, or run --workers 1"
    )


class Server(BaseApplication):
    def __init__(self, options: dict[str, Any], settings: Settings) -> None:
        self.options = options
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from idcscan.api.app import create_app

        return create_app(self.settings)


def serve(host: str, port: int, workers: int, threads: int) -> int:
    from idcscan.api import logs
    from idcscan.core.settings import get_settings

    settings = get_settings()
    logs.configure(settings.log_level)
    workers = api_processes(settings, workers)
    settings = shared_rate_limits(settings, workers)
    Server(
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "threads": threads,
            # gthread, but a thread is used only once a request's head has arrived (slowloris).
            "worker_class": "idcscan.api.slowclients.HeadFirstThreadWorker",
            # The app logs each request as JSON (ids, route template, latency); no access log.
            "accesslog": None,
            "errorlog": "-",
            "loglevel": settings.log_level.lower(),
            "timeout": 120,
            "graceful_timeout": 20,
            "child_exit": _child_exit,
        },
        settings,
    ).run()
    return 0
