"""Structured logs of the service processes (API, worker, scheduler): one JSON object per line.

What may reach a log is decided here, not at each call site: the formatter writes the message and
only the whitelisted context fields below. File names, labels and slide metadata can hold patient
names: exceptions are logged by type and frames, never by message, because messages of
third-party errors (OpenSlide, fsspec, zipfile) quote paths and archive member names.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime

CONTEXT_FIELDS = (
    "request_id",
    "client_id",
    "job_id",
    "method",
    "route",
    "status",
    "duration_ms",
    "seconds",  # a job's time by stage (worker): numbers only
    "single_pass",  # whether the worker read each block once for the mask and the tiles
    "peak_rss_mb",  # the worker process's peak memory after a job
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["error"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            entry["traceback"] = "".join(traceback.format_tb(record.exc_info[2]))
        return json.dumps(entry, default=str)


def configure(level: str) -> None:
    """JSON lines on stderr for the whole process (idempotent)."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:
        if isinstance(handler.formatter, JsonFormatter):
            return
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
