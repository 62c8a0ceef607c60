"""`idcscan api`: the app under gunicorn, threaded workers, one app per worker (after the fork)."""

from __future__ import annotations

import multiprocessing
from typing import Any

from gunicorn.app.base import BaseApplication


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


class Server(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from idcscan.api.app import create_app

        return create_app()


def serve(host: str, port: int, workers: int, threads: int) -> int:
    from idcscan.api import logs
    from idcscan.core.settings import get_settings

    settings = get_settings()
    logs.configure(settings.log_level)
    Server(
        {
            "bind": f"{host}:{port}",
            "workers": workers or min(2 * multiprocessing.cpu_count() + 1, 8),
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
        }
    ).run()
    return 0
