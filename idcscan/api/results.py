"""Results of a succeeded job: the slide summary, per-tile scores, the heatmap and the GeoJSON.

Tiles come from the database as a stream (JSON, or CSV when the worker stored none); pictures and
exports are streamed from storage in chunks, as the worker wrote them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request, stream_with_context
from pydantic import ValidationError
from spectree import Response as Resp
from sqlalchemy import select

from idcscan.api.jobs import PROBLEMS, own_job
from idcscan.api.problems import Problem
from idcscan.api.schemas import (
    ProblemOut,
    SlideResultOut,
    TilesOut,
    TilesQuery,
    aware,
    invalid_request,
    spec,
)
from idcscan.core import tilerows
from idcscan.core.db import ConfusionStat, Job, JobStatus, Model, SlideResult, TileScore
from idcscan.core.metrics import Confusion
from idcscan.core.storage import open_uri
from idcscan.core.summary import SlideSummary

bp = Blueprint("results", __name__, url_prefix="/v1")

ROWS_PER_FETCH = 5000
RESULT_PROBLEMS = {"HTTP_409": ProblemOut, **PROBLEMS}


def succeeded_result(job_id: uuid.UUID) -> tuple[Job, SlideResult]:
    with current_app.extensions["idcscan.db"]() as session:
        job = own_job(session, job_id)
        result = session.get(SlideResult, job.id)
    if job.status != JobStatus.SUCCEEDED.value or result is None:
        raise Problem(
            409,
            "job-not-succeeded",
            f"The job is {job.status}; results exist once it succeeds.",
            job_status=job.status,
        )
    return job, result


@bp.get("/jobs/<uuid:job_id>/result")
@spec.validate(resp=Resp(HTTP_200=SlideResultOut, **RESULT_PROBLEMS), tags=["results"])
def get_result(job_id: uuid.UUID) -> Any:
    """The slide summary; with labels, the confusion matrix at the model's threshold."""
    return result_out(*succeeded_result(job_id))


def result_out(job: Job, result: SlideResult) -> SlideResultOut:
    """The answer of `/result` (the viewer shows and offers the same)."""
    with current_app.extensions["idcscan.db"]() as session:
        model = session.get(Model, result.model_id)
        stat = session.get(ConfusionStat, job.id)
    confusion = Confusion(stat.tp, stat.fp, stat.tn, stat.fn).as_dict() if stat else None
    return SlideResultOut(
        job_id=job.id,
        model_id=result.model_id,
        model_version=model.version if model else "",
        model_variant=result.model_variant or "fp32",
        **SlideSummary.from_columns(result).as_dict(),
        confusion=confusion,
        created_at=aware(result.created_at),
    )


def _tile_rows(job_id: uuid.UUID) -> Iterator[TileScore]:
    statement = (
        select(TileScore)
        .where(TileScore.job_id == job_id)
        .order_by(TileScore.row, TileScore.col)
        .execution_options(yield_per=ROWS_PER_FETCH)
    )
    with current_app.extensions["idcscan.db"]() as session:
        yield from session.scalars(statement)


def tiles_json(job_id: uuid.UUID) -> Iterator[bytes]:
    yield b'{"job_id": "%s", "tiles": [' % str(job_id).encode()
    separator = b""
    for tile in _tile_rows(job_id):
        yield separator + json.dumps(tilerows.json_row(_columns(tile))).encode()
        separator = b","
    yield b"]}"


def _columns(tile: TileScore) -> dict[str, Any]:
    return {name: getattr(tile, name) for name in tilerows.SCORE_COLUMNS}


def tiles_csv(job_id: uuid.UUID) -> Iterator[bytes]:
    return tilerows.csv_chunks(_columns(tile) for tile in _tile_rows(job_id))


@bp.get("/jobs/<uuid:job_id>/tiles")
@spec.validate(
    query=TilesQuery,
    resp=Resp(HTTP_200=TilesOut, HTTP_422=ProblemOut, **RESULT_PROBLEMS),
    tags=["results"],
    skip_validation=True,
)
def get_tiles(job_id: uuid.UUID) -> Any:
    """Per-tile IDC probabilities (and labels) as JSON, or CSV with `Accept: text/csv` or
    `?format=csv`."""
    # Validated here, not by spectree (which would buffer the streamed body to check it).
    try:
        query = TilesQuery.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise invalid_request(exc) from None
    job, result = succeeded_result(job_id)
    wanted = query.format or (
        "csv"
        if request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv"
        else "json"
    )
    if wanted == "csv":
        body = stored_file(result.tiles_csv_uri) if result.tiles_csv_uri else tiles_csv(job.id)
        return Response(stream_with_context(body), mimetype="text/csv")
    return Response(stream_with_context(tiles_json(job.id)), mimetype="application/json")


def stored_file(uri: str | None) -> Iterator[bytes]:
    """Chunks of a file the worker stored; opened before the response starts, so that a missing
    file is a 404 and not a broken stream."""
    if not uri:
        raise Problem(404, "artifact-missing", "The worker stored no such file for this job.")
    try:
        handle = open_uri(uri)
    except FileNotFoundError:
        raise Problem(404, "artifact-missing", "The stored file is gone.") from None

    def chunks() -> Iterator[bytes]:
        with handle:
            while block := handle.read(1 << 20):
                yield block

    return chunks()


@bp.get("/jobs/<uuid:job_id>/heatmap.png")
@spec.validate(resp=Resp(**RESULT_PROBLEMS), tags=["results"], skip_validation=True)
def get_heatmap(job_id: uuid.UUID) -> Any:
    """The IDC probability heatmap (PNG) to lay over the slide."""
    _job, result = succeeded_result(job_id)
    return Response(stored_file(result.heatmap_uri), mimetype="image/png")


@bp.get("/jobs/<uuid:job_id>/annotations.geojson")
@spec.validate(resp=Resp(**RESULT_PROBLEMS), tags=["results"], skip_validation=True)
def get_annotations(job_id: uuid.UUID) -> Any:
    """IDC regions as GeoJSON in level-0 pixel coordinates (QuPath imports them)."""
    _job, result = succeeded_result(job_id)
    return Response(stored_file(result.geojson_uri), mimetype="application/geo+json")
