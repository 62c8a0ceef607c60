"""The one tile-row writer and QuPath feature builder: the shape every caller gets."""

from __future__ import annotations

import json

import numpy as np

from idcscan.core import tilerows
from idcscan.core.labels import GridGeometry, parse_labels


def rows_of(
    rows: np.ndarray,
    cols: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    probability: np.ndarray,
    labels: np.ndarray | None,
) -> list[dict[str, object]]:
    """Scored tiles as rows, one dict each; a label below 0 (unlabelled) is None."""
    marks = labels.tolist() if labels is not None else [None] * len(rows)
    return [
        {
            "row": r,
            "col": c,
            "x": tx,
            "y": ty,
            "probability": p,
            "label": None if m is None or m < 0 else m,
        }
        for r, c, tx, ty, p, m in zip(
            rows.tolist(),
            cols.tolist(),
            x.tolist(),
            y.tolist(),
            probability.tolist(),
            marks,
            strict=True,
        )
    ]


def _scored() -> list[dict[str, object]]:
    return rows_of(
        rows=np.array([0, 1]),
        cols=np.array([2, 0]),
        x=np.array([100, 0]),
        y=np.array([0, 50]),
        probability=np.array([0.25, 0.875], dtype=np.float32),
        labels=np.array([1, -1], dtype=np.int8),
    )


def test_scored_tiles_as_csv_and_json_share_columns_and_format() -> None:
    rows = _scored()
    text = tilerows.csv_bytes(rows).decode()
    assert text == "row,col,x,y,probability,label\n0,2,100,0,0.250000,1\n1,0,0,50,0.875000,\n"
    assert [tilerows.json_row(r) for r in rows] == [
        {"row": 0, "col": 2, "x": 100, "y": 0, "probability": 0.25, "label": 1},
        {"row": 1, "col": 0, "x": 0, "y": 50, "probability": 0.875, "label": None},
    ]


def test_a_tile_csv_reads_back_as_the_labels_it_holds() -> None:
    grid = GridGeometry(rows=2, cols=3, tile0=50.0, stride0=50.0)
    scored = parse_labels(tilerows.csv_bytes(_scored())).tile_labels(grid)
    np.testing.assert_array_equal(scored, [[-1, -1, 1], [-1, -1, -1]])
    patches = [{"row": 1, "col": 1, "x": 50, "y": 50, "width": 50, "height": 50, "label": 1}]
    truth = tilerows.csv_bytes(patches, tilerows.TRUTH_COLUMNS)
    assert truth.decode().splitlines()[0] == "row,col,x,y,width,height,label"
    np.testing.assert_array_equal(
        parse_labels(truth).tile_labels(grid), [[-1, -1, -1], [-1, 1, -1]]
    )


def test_csv_streams_in_chunks_with_one_header() -> None:
    many = [
        {"row": i, "col": 0, "x": 0, "y": i * 50, "probability": 0.5, "label": None}
        for i in range(tilerows.ROWS_PER_CHUNK + 1)
    ]
    chunks = list(tilerows.csv_chunks(many))
    assert len(chunks) == 2
    assert b"".join(chunks).count(b"row,col") == 1


def test_idc_feature_is_a_closed_qupath_rectangle_in_level0_pixels() -> None:
    feature = tilerows.idc_feature(50, 0, 150, 50, {"tiles": 2, "max_probability": 0.9})
    assert feature["geometry"] == {
        "type": "Polygon",
        "coordinates": [[[50, 0], [150, 0], [150, 50], [50, 50], [50, 0]]],
    }
    assert feature["properties"] == {
        "objectType": "annotation",
        "classification": {"name": "IDC", "color": [200, 0, 0]},
        "isLocked": False,
        "measurements": {"tiles": 2, "max_probability": 0.9},
    }
    assert "measurements" not in tilerows.idc_feature(0, 0, 50, 50)["properties"]
    document = tilerows.geojson_bytes([feature])
    assert json.loads(document)["type"] == "FeatureCollection"
    grid = GridGeometry(rows=1, cols=3, tile0=50.0, stride0=50.0)
    np.testing.assert_array_equal(parse_labels(document).tile_labels(grid), [[0, 1, 1]])


def test_the_fast_csv_of_a_slide_is_the_same_text_as_the_row_writer() -> None:
    rng = np.random.default_rng(0)
    n = 500
    arrays = {
        "rows": rng.integers(0, 400, n),
        "cols": rng.integers(0, 300, n),
        "x": rng.integers(0, 10**5, n),
        "y": rng.integers(0, 10**5, n),
        "probability": rng.random(n, dtype=np.float32),
    }
    for labels in (None, rng.integers(-1, 2, n).astype(np.int8)):
        fast = tilerows.score_csv(**arrays, labels=labels)
        assert fast == tilerows.csv_bytes(rows_of(**arrays, labels=labels))
