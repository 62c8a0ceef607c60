"""A scored slide's rows in the database: its tile scores, its summary and, where it came with
labels, its confusion matrix. Written inside the transaction that ends the job as `succeeded`
(`idcscan.core.jobstate.finish`, which has already removed an earlier attempt's rows), so a job
is either done with all its rows or has none."""

from __future__ import annotations

import uuid

import numpy as np
from sqlalchemy.orm import Session

from idcscan.core.db import ConfusionStat, SlideResult, TileScore
from idcscan.worker import outputs
from idcscan.worker.pipeline import SlideScore

# Tile scores per INSERT statement (SQLite).
INSERT_CHUNK = 5000
# The columns of a tile score, in the order both writers send them.
TILE_COLUMNS = ("job_id", "row", "col", "x", "y", "probability", "label")


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
            model_variant=score.model_variant,
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
    """Every tile's row: one binary COPY on PostgreSQL, executemany in chunks on SQLite. The
    job's earlier rows were deleted in the same transaction, so a rerun replaces them; the
    (job, row, col) key makes a duplicate impossible."""
    connection = session.connection()
    columns = ", ".join(f'"{name}"' for name in TILE_COLUMNS)
    if connection.dialect.name == "postgresql":
        driver = connection.connection.driver_connection
        assert driver is not None
        with (
            driver.cursor() as cursor,
            cursor.copy(
                f"COPY {TileScore.__tablename__} ({columns}) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.write(copy_binary(job_id, score))
        return
    # SQLite: tuples straight to the driver, no per-row bind processing; the Uuid column holds
    # 32 hex digits there, as SQLAlchemy writes it.
    labels = score.labels if score.labels is not None else np.full(len(score.rows), -1)
    nullable = labels.astype(object)  # Python ints, None where a tile has no label
    nullable[labels < 0] = None
    rows = list(
        zip(
            [job_id.hex] * len(score.rows),
            score.rows.tolist(),
            score.cols.tolist(),
            score.x.tolist(),
            score.y.tolist(),
            score.probability.tolist(),
            nullable.tolist(),
            strict=True,
        )
    )
    marks = ", ".join("?" for _ in TILE_COLUMNS)
    insert = f"INSERT INTO {TileScore.__tablename__} ({columns}) VALUES ({marks})"
    for start in range(0, len(rows), INSERT_CHUNK):
        connection.exec_driver_sql(insert, rows[start : start + INSERT_CHUNK])


def _copy_row(label: bool) -> np.dtype:
    """One tuple of PostgreSQL's binary COPY format (big-endian): the field count, then each
    field's byte length and value; a NULL label is its length -1 and no value."""
    fields: list[tuple[str, str] | tuple[str, str, tuple[int]]] = [
        ("fields", ">i2"),
        ("job_id_len", ">i4"),
        ("job_id", "u1", (16,)),
    ]
    for name in ("row", "col", "x", "y"):
        fields += [(f"{name}_len", ">i4"), (name, ">i4")]
    fields += [("probability_len", ">i4"), ("probability", ">f8"), ("label_len", ">i4")]
    if label:
        fields.append(("label", ">i2"))
    return np.dtype(fields)


def copy_binary(job_id: uuid.UUID, score: SlideScore) -> bytes:
    """The tile rows as one PostgreSQL binary COPY stream, built by numpy: no Python per tile.
    Rows may come in any order, so labelled and unlabelled tiles go as two runs of fixed-size
    tuples. (psycopg's `write_row` would make a Python call per tile.)"""
    labels = score.labels if score.labels is not None else np.full(len(score.rows), -1)
    columns = {"row": score.rows, "col": score.cols, "x": score.x, "y": score.y}
    parts = [b"PGCOPY\n\xff\r\n\x00", np.zeros(2, ">i4").tobytes()]  # signature, flags, ext.
    for labelled in (True, False):
        keep = labels >= 0 if labelled else labels < 0
        run = np.empty(int(np.count_nonzero(keep)), dtype=_copy_row(labelled))
        run["fields"] = len(TILE_COLUMNS)
        run["job_id_len"] = 16
        run["job_id"] = np.frombuffer(job_id.bytes, np.uint8)
        for name, values in columns.items():
            run[f"{name}_len"] = 4
            run[name] = values[keep]
        run["probability_len"] = 8
        run["probability"] = score.probability[keep]
        if labelled:
            run["label_len"] = 2
            run["label"] = labels[keep]
        else:
            run["label_len"] = -1
        parts.append(run.tobytes())
    parts.append(np.array([-1], ">i2").tobytes())  # the trailer
    return b"".join(parts)
