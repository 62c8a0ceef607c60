"""Rows for tests, built the way the service builds them (factories, as redash's tests have).

Each factory takes an open session, adds one row, flushes (so its id is known) and returns it;
the caller's transaction commits. A client gets a real API key through the same function as
`idcscan clients add`; a model a real tile contract; a job the columns its state implies, its
ending written by `idcscan.core.jobstate.ended` as the service writes it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from idcscan.core import jobstate
from idcscan.core.db import (
    Client,
    ConfusionStat,
    ErrorKind,
    Job,
    JobStatus,
    Model,
    SlideResult,
    utcnow,
)
from idcscan.core.summary import SlideCall, SlideSummary
from idcscan.core.tiles import TileSpec

LEASE_S = 60
"""A running job's lease from the factory: long enough that no reconciler takes it over."""


def client(session: Session, name: str | None = None, *, admin: bool = False) -> tuple[Client, str]:
    """A client and its API key (the only time the key exists in clear)."""
    from idcscan.api.auth import add_client

    return add_client(session, name or f"client-{secrets.token_hex(4)}", admin)


def model(
    session: Session,
    version: str | None = None,
    *,
    location: str | None = None,
    architecture: str = "resnet18",
    active: bool = False,
    **columns: Any,
) -> Model:
    """A registered model with the default tile contract; `location` names its ONNX file (a
    worker that scores with it needs a real one)."""
    version = version or f"test-{secrets.token_hex(4)}"
    spec = TileSpec(model_version=version)
    row = Model(
        version=version,
        architecture=architecture,
        onnx_sha256=hashlib.sha256(version.encode()).hexdigest(),
        location=location or f"models/{version}.onnx",
        tile_spec=json.loads(spec.to_json()),
        threshold=spec.threshold,
        active=active,
        **columns,
    )
    session.add(row)
    session.flush()
    return row


def _state(status: JobStatus) -> dict[str, Any]:
    """What a job in `status` holds besides its status: running, one attempt and a live lease;
    ended, what every ending writes; failed, an error."""
    now = utcnow()
    if status == JobStatus.RUNNING:
        return {
            "status": status.value,
            "attempts": 1,
            "lease_owner": "factory-worker",
            "lease_expires_at": now + timedelta(seconds=LEASE_S),
            "started_at": now,
        }
    if status.finished:
        values = jobstate.ended(status, now, attempts=1, started_at=now)
        if status == JobStatus.FAILED:
            values.update(error_kind=ErrorKind.INTERNAL.value, error_message="factory failure")
        return values
    return {"status": status.value}


def job(
    session: Session,
    owner: Client,
    scored_by: Model,
    status: JobStatus = JobStatus.QUEUED,
    *,
    slide_uri: str = "slides/aa/aa11.svs",
    **columns: Any,
) -> Job:
    """A job of `owner` for `scored_by` in `status`; `columns` override what the state implies."""
    row = Job(
        client_id=owner.id,
        model_id=scored_by.id,
        slide_uri=slide_uri,
        **{**_state(status), **columns},
    )
    session.add(row)
    session.flush()
    return row


def summary(tiles: int = 10, idc_tiles: int = 5) -> SlideSummary:
    """A plausible slide summary at the model scale (4 um/px, 200 um tiles)."""
    return SlideSummary(
        tissue_tiles=tiles,
        idc_tiles=idc_tiles,
        idc_area_mm2=idc_tiles * 0.04,
        idc_fraction=idc_tiles / tiles if tiles else 0.0,
        max_probability=0.9 if tiles else None,
        mean_probability=0.5 if tiles else None,
        slide_call=SlideCall.IDC if idc_tiles else SlideCall.NO_IDC,
        call_rule="any tile",
        threshold=0.5,
        level=0,
        level_mpp=0.5,
        effective_mpp=4.0,
    )


def results(
    session: Session,
    done: Job,
    confusion: tuple[int, int, int, int] | None = None,
    **columns: Any,
) -> SlideResult:
    """A succeeded job's summary and, given (tp, fp, tn, fn), its confusion matrix, as the worker
    writes them; `columns` (e.g. `created_at`) go to both rows."""
    tp, fp, tn, fn = confusion or (0, 0, 0, 0)
    row = SlideResult(
        job_id=done.id,
        model_id=done.model_id,
        **summary(tp + fp + tn + fn, tp + fp).columns(),
        **columns,
    )
    session.add(row)
    if confusion is not None:
        session.add(
            ConfusionStat(
                job_id=done.id,
                client_id=done.client_id,
                model_id=done.model_id,
                threshold=row.threshold,
                tp=tp,
                fp=fp,
                tn=tn,
                fn=fn,
                **columns,
            )
        )
    session.flush()
    return row
