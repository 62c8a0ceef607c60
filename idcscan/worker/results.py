"""A scored slide's rows in the database: its tile scores, its summary and, where it came with
labels, its confusion matrix. Written inside the transaction that ends the job as `succeeded`
(`idcscan.core.jobstate.finish`, which has already removed an earlier attempt's rows), so a job
is either done with all its rows or has none."""

from __future__ import annotations

import uuid

from sqlalchemy import insert
from sqlalchemy.orm import Session

from idcscan.core.db import ConfusionStat, SlideResult, TileScore
from idcscan.worker import outputs
from idcscan.worker.pipeline import SlideScore

# Tile scores per INSERT statement.
INSERT_CHUNK = 5000


def write(
    session: Session,
    score: SlideScore,
    uris: dict[str, str],
    *,
    job_id: uuid.UUID,
    client_id: int,
    model_id: int,
) -> None:
    """Every row of one scored slide; `uris` names its stored files (`outputs.render`)."""
    summary = score.summary
    write_tile_scores(session, job_id, score)
    session.add(
        SlideResult(
            job_id=job_id,
            model_id=model_id,
            **summary.columns(),
            heatmap_uri=uris[outputs.HEATMAP],
            geojson_uri=uris[outputs.GEOJSON],
            tiles_csv_uri=uris[outputs.TILES_CSV],
        )
    )
    if score.confusion is not None:
        c = score.confusion
        session.add(
            ConfusionStat(
                job_id=job_id,
                client_id=client_id,
                model_id=model_id,
                threshold=summary.threshold,
                tp=c.tp,
                fp=c.fp,
                tn=c.tn,
                fn=c.fn,
            )
        )


def write_tile_scores(session: Session, job_id: uuid.UUID, score: SlideScore) -> None:
    """Bulk insert, executemany in chunks (psycopg pipelines them). The job's earlier rows were
    deleted in the same transaction, so a rerun replaces them; the (job, row, col) key makes a
    duplicate impossible."""
    rows = [{"job_id": job_id, **row} for row in outputs.tile_rows(score)]
    stmt = insert(TileScore)
    for start in range(0, len(rows), INSERT_CHUNK):
        session.execute(stmt, rows[start : start + INSERT_CHUNK])
