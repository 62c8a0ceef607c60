"""Confusion statistics of the caller's labelled jobs, summed per model and calendar period (UTC).

The filter runs in SQL; the grouping by day, ISO week or month runs in Python over the filtered
rows, which keeps one code path for SQLite and PostgreSQL (their date functions differ).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, current_app, request
from spectree import Response as Resp
from sqlalchemy import select

from idcscan.api.auth import caller
from idcscan.api.jobs import PROBLEMS
from idcscan.api.schemas import ConfusionBucket, ConfusionStats, StatsQuery, aware, spec
from idcscan.core.db import ConfusionStat
from idcscan.core.metrics import Confusion

bp = Blueprint("stats", __name__, url_prefix="/v1")


def period_start(moment: datetime, period: str) -> datetime:
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return day


@bp.get("/stats/confusion")
@spec.validate(query=StatsQuery, resp=Resp(HTTP_200=ConfusionStats, **PROBLEMS), tags=["stats"])
def confusion_stats() -> Any:
    """tp/fp/tn/fn and derived figures (missed IDC first) per model and period, over the
    caller's labelled jobs."""
    query: StatsQuery = request.context.query  # type: ignore[attr-defined]
    statement = select(
        ConfusionStat.model_id,
        ConfusionStat.created_at,
        ConfusionStat.tp,
        ConfusionStat.fp,
        ConfusionStat.tn,
        ConfusionStat.fn,
    ).where(ConfusionStat.client_id == caller().id)
    if query.model_id is not None:
        statement = statement.where(ConfusionStat.model_id == query.model_id)
    if query.since is not None:
        statement = statement.where(ConfusionStat.created_at >= aware(query.since))
    if query.until is not None:
        statement = statement.where(ConfusionStat.created_at < aware(query.until))
    totals: dict[tuple[int, datetime], Confusion] = defaultdict(Confusion)
    jobs: dict[tuple[int, datetime], int] = defaultdict(int)
    with current_app.extensions["idcscan.db"]() as session:
        for model_id, created_at, tp, fp, tn, fn in session.execute(statement):
            bucket = (model_id, period_start(aware(created_at), query.period))  # type: ignore[arg-type]
            totals[bucket] += Confusion(tp, fp, tn, fn)
            jobs[bucket] += 1
    buckets = [
        ConfusionBucket(
            model_id=m, period_start=start, jobs=jobs[(m, start)], confusion=c.as_dict()
        )
        for (m, start), c in sorted(totals.items())
    ]
    return ConfusionStats(period=query.period, buckets=buckets)
