"""Tile rows and QuPath features, written one way for every file and response that holds them.

The worker's `tiles.csv` and `annotations.geojson`, the ground truth `idcscan assemble` writes
beside a slide and the API's `/tiles` (JSON or CSV) all come from here, so a tile CSV has the
same column names, units and number format wherever it came from: positions on the scoring grid
(`row`, `col`) and the tile's top-left corner in level-0 pixels (`x`, `y`), a probability with
six decimals, a label of 1 (IDC), 0 (not IDC) or an empty cell (no ground truth). The CSV reads
back as labels (`idcscan.core.labels.parse_labels`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

SCORE_COLUMNS = ("row", "col", "x", "y", "probability", "label")
"""A scored tile: the worker's `tiles.csv`, the database's `tile_scores`, the API's `/tiles`."""
TRUTH_COLUMNS = ("row", "col", "x", "y", "width", "height", "label")
"""A labelled patch of the dataset (`idcscan assemble`): its square in level-0 pixels."""
PROBABILITY_DECIMALS = 6
# Rows formatted per chunk of a streamed CSV: a response's chunks stay well under a megabyte.
ROWS_PER_CHUNK = 1000

IDC_CLASSIFICATION = {"name": "IDC", "color": [200, 0, 0]}

TileRow = Mapping[str, Any]
"""One tile by column name; a missing or None value is an empty cell."""


def _cell(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name == "probability":
        return f"{value:.{PROBABILITY_DECIMALS}f}"
    return str(value)


def csv_chunks(
    rows: Iterable[TileRow], columns: tuple[str, ...] = SCORE_COLUMNS
) -> Iterator[bytes]:
    """The CSV (header first) in chunks of `ROWS_PER_CHUNK` rows, for a streamed response."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for n, row in enumerate(rows, 1):
        writer.writerow([_cell(name, row.get(name)) for name in columns])
        if n % ROWS_PER_CHUNK == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def csv_bytes(rows: Iterable[TileRow], columns: tuple[str, ...] = SCORE_COLUMNS) -> bytes:
    return b"".join(csv_chunks(rows, columns))


def score_csv(
    rows: np.ndarray,
    cols: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    probability: np.ndarray,
    labels: np.ndarray | None,
) -> bytes:
    """The scored tiles' CSV (the text `csv_bytes` writes) from the pipeline's arrays: each column is
    converted in one call and the rows written by csv's C loop, no Python statement per tile (a
    full-size slide has 10^5 tiles)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SCORE_COLUMNS)
    labels = labels if labels is not None else np.full(len(rows), -1)
    writer.writerows(
        zip(
            rows.tolist(),
            cols.tolist(),
            x.tolist(),
            y.tolist(),
            map(f"{{:.{PROBABILITY_DECIMALS}f}}".format, probability.tolist()),
            np.where(labels < 0, "", labels.astype(str)).tolist(),
            strict=True,
        )
    )
    return out.getvalue().encode()


def json_row(row: TileRow) -> dict[str, Any]:
    """A scored tile as the API's JSON serves it: the CSV's columns and rounding."""
    values = {name: row.get(name) for name in SCORE_COLUMNS}
    if values["probability"] is not None:
        values["probability"] = round(float(values["probability"]), PROBABILITY_DECIMALS)
    return values


def idc_feature(
    x0: int, y0: int, x1: int, y1: int, measurements: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """An IDC rectangle [x0, x1) x [y0, y1) in level-0 pixels as a GeoJSON Feature QuPath
    imports: it reads `objectType` and `classification`, and shows `measurements`."""
    properties: dict[str, Any] = {
        "objectType": "annotation",
        "classification": dict(IDC_CLASSIFICATION),
        "isLocked": False,
    }
    if measurements is not None:
        properties["measurements"] = dict(measurements)
    return {
        "type": "Feature",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
        },
        "properties": properties,
    }


def feature_collection(features: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def geojson_bytes(features: Iterable[dict[str, Any]]) -> bytes:
    """A FeatureCollection as compact JSON (a slide can hold thousands of regions)."""
    return json.dumps(feature_collection(features), separators=(",", ":")).encode()
