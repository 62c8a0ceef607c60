"""The worklist: the caller's jobs ranked for reading, most suspicious first, with viewer links.

A lab with a backlog reads the slides most likely to hold cancer first. Suspicion is the slide
call (IDC before no IDC before no tissue), then the IDC area, then the highest tile
probability; jobs without results (queued, running with their progress, failed, cancelled)
follow, newest first. The ordering runs in SQL on the job's `slide_results` row, so a day of a
busy lab costs one query; the list is bounded (`limit`) and narrowed by date rather than paged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, request
from spectree import Response as Resp
from sqlalchemy import Select, case, select
from sqlalchemy.sql.elements import ColumnElement

from idcscan.api import viewer
from idcscan.api.auth import caller
from idcscan.api.jobs import PROBLEMS, job_out
from idcscan.api.schemas import (
    ProblemOut,
    Worklist,
    WorklistItem,
    WorklistQuery,
    WorklistSummary,
    aware,
    spec,
)
from idcscan.core.db import ConfusionStat, Job, JobStatus, SlideResult
from idcscan.core.summary import SlideCall

bp = Blueprint("worklist", __name__, url_prefix="/v1")

CALL_RANK = {
    SlideCall.IDC: 0,
    SlideCall.INDETERMINATE: 1,
    SlideCall.NO_IDC: 2,
    SlideCall.NO_TISSUE: 3,
}
"""Which slide calls are read first: IDC, then the slides the model cannot judge (stained unlike
its training data: a pathologist must read them), then the rest. A call missing here ranks after
these, before no result."""


def _suspicion_order(sort: str) -> list[ColumnElement[Any]]:
    """ORDER BY terms: jobs with a result first, then by `sort`, ties newest first. Written with
    CASE rather than NULLS LAST, which SQLite and PostgreSQL spell and default differently."""
    no_result = case((SlideResult.job_id.is_(None), 1), else_=0)
    call_rank = case(
        *((SlideResult.slide_call == call.value, rank) for call, rank in CALL_RANK.items()),
        else_=len(CALL_RANK),
    )
    max_probability = case(
        (SlideResult.max_probability.is_(None), 0.0), else_=SlideResult.max_probability
    )
    orders: dict[str, list[ColumnElement[Any]]] = {
        "suspicion": [call_rank, SlideResult.idc_area_mm2.desc(), max_probability.desc()],
        "idc_area": [SlideResult.idc_area_mm2.desc(), max_probability.desc()],
        "max_probability": [max_probability.desc(), SlideResult.idc_area_mm2.desc()],
        "newest": [],
    }
    by = orders[sort]
    first: list[ColumnElement[Any]] = [] if sort == "newest" else [no_result]
    return [*first, *by, Job.created_at.desc(), Job.id.desc()]


def _statement(query: WorklistQuery) -> Select[Job, SlideResult, int]:
    statement = (
        select(Job, SlideResult, ConfusionStat.fn)
        .outerjoin(SlideResult, SlideResult.job_id == Job.id)
        .outerjoin(ConfusionStat, ConfusionStat.job_id == Job.id)
        .where(Job.client_id == caller().id)
    )
    if query.status is not None:
        statement = statement.where(Job.status == query.status)
    if query.since is not None:
        statement = statement.where(Job.created_at >= _utc(query.since))
    if query.until is not None:
        statement = statement.where(Job.created_at < _utc(query.until))
    return statement.order_by(*_suspicion_order(query.sort)).limit(query.limit)


def _utc(moment: datetime) -> datetime:
    """SQLite stores timestamps as UTC text without an offset: compare in UTC."""
    return aware(moment).astimezone(UTC)  # type: ignore[union-attr]


def _summary(result: SlideResult, missed: int | None) -> WorklistSummary:
    """The stored summary's columns the worklist shows (named as in `SlideSummary`)."""
    shown = (name for name in WorklistSummary.model_fields if name != "missed_idc")
    return WorklistSummary(**{name: getattr(result, name) for name in shown}, missed_idc=missed)


@bp.get("/worklist")
@spec.validate(
    query=WorklistQuery,
    resp=Resp(HTTP_200=Worklist, HTTP_422=ProblemOut, **PROBLEMS),
    tags=["jobs"],
)
def get_worklist() -> Any:
    """The caller's jobs ranked by suspicion (or by IDC area, max probability, newest),
    filtered by status and submission time, each succeeded job with a signed viewer link."""
    query: WorklistQuery = request.context.query  # type: ignore[attr-defined]
    with current_app.extensions["idcscan.db"]() as session:
        rows = session.execute(_statement(query)).all()
    links = viewer.LinkMinter.for_app()
    items = []
    for rank, (job, result, missed) in enumerate(rows, 1):
        succeeded = job.status == JobStatus.SUCCEEDED.value and result is not None
        items.append(
            WorklistItem(
                rank=rank,
                job=job_out(job),
                summary=_summary(result, missed) if succeeded else None,
                viewer_url=links.url(job.id) if succeeded else None,
            )
        )
    return Worklist(sort=query.sort, items=items, viewer_expires_at=links.expires_at)
