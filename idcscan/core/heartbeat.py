"""Heartbeat files: how a container's health check tells a live worker or scheduler from a wedged one.

A long-running process touches its file from the loop that does its work (the Celery worker's
event loop, the reconciler's round), so the file's age is the time since that loop last turned.
`idcscan health worker|scheduler` reads the age; a loop that hangs, or a process that is gone,
leaves the file to grow stale. A file's modification time is all there is to it: no lock, no
content to parse, nothing to go wrong in the check itself.

The default files live in the temporary folder, which is each container's own: replicas of one
service (`--scale worker-cpu=2`) never share a heartbeat, whereas the data folder is a volume
they all mount.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

# How often the worker touches its file, in seconds; `idcscan health worker` allows several misses.
WORKER_BEAT_S = 10.0


def default_path(role: str) -> Path:
    """The heartbeat file of `role` ("worker" or "scheduler") in this container or host, named
    with the user's id: on a shared host another user's file in /tmp is not ours to touch."""
    return Path(tempfile.gettempdir()) / f"idcscan-{role}-{os.getuid()}.heartbeat"


def beat(path: Path) -> None:
    """Record that the loop turned now: create the file or renew its modification time.

    A file that cannot be written is logged, not raised: the process keeps working, and its
    health check reports the missing heartbeat."""
    try:
        path.touch(mode=0o600, exist_ok=True)  # an existing file's time is renewed
    except OSError as exc:
        log.warning("heartbeat: cannot touch %s: %s", path, exc)


def age_s(path: Path) -> float | None:
    """Seconds since the last beat, or None when there has been none."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return None
