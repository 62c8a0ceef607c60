"""Service logs carry ids, never file names: exceptions are logged by type and frames only."""

from __future__ import annotations

import json
import logging
import uuid

from idcscan.core.logs import JsonFormatter


def test_exception_messages_never_reach_the_log() -> None:
    canary = f"patient-{uuid.uuid4().hex}"
    try:
        raise OSError(f"cannot read /slides/{canary}.svs")
    except OSError:
        record = logging.LogRecord(
            "idcscan.worker.jobs",
            logging.ERROR,
            __file__,
            1,
            "job %s: internal error",
            ("j-1",),
            None,
        )
        record.exc_info = __import__("sys").exc_info()
    record.job_id = "j-1"
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["message"] == "job j-1: internal error"
    assert entry["error"] == "OSError" and entry["job_id"] == "j-1"
    assert "test_exception_messages_never_reach_the_log" in entry["traceback"]
    assert canary not in line
