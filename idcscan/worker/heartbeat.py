"""The worker's heartbeat: a Celery bootstep that touches a file from the worker's own timer.

The timer runs in the worker's main loop (the one that takes messages and hands them to the
pool), so a fresh file means that loop turns; a worker wedged in it, or stuck reconnecting to
the broker, stops beating and `idcscan health worker` says so. This is the liveness probe the
Celery documentation describes ("Bootsteps", "Worker liveness probe"), with the file named by
the command line so that each replica has its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from celery import bootsteps

from idcscan.core.heartbeat import WORKER_BEAT_S, beat


def heartbeat_step(path: Path) -> type[bootsteps.StartStopStep]:
    """A bootstep class that beats `path` every WORKER_BEAT_S seconds while the worker runs."""

    class Heartbeat(bootsteps.StartStopStep):
        requires: ClassVar[set[str]] = {"celery.worker.components:Timer"}

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self.tref: Any = None

        def start(self, worker: Any) -> None:
            beat(path)
            self.tref = worker.timer.call_repeatedly(WORKER_BEAT_S, beat, (path,), priority=10)

        def stop(self, worker: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()
            # A worker shutting down is no longer live: its check fails at once.
            path.unlink(missing_ok=True)

    return Heartbeat
