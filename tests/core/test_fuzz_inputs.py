"""Property tests of what clients send: any bytes, as labels, a slide or a zip, give either a
parsed result or the project's `InvalidInput`, never another exception.

Hypothesis draws the inputs: arbitrary bytes, bytes behind each format's magic number, mutated
real files, structured GeoJSON and CSV (checked against a plain reference reading), and zips with
hostile names, sizes and contents. Each property runs 100 examples; `IDCSCAN_FUZZ_EXAMPLES=5000`
runs more (no example database is written: every run draws afresh).
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from idcscan.core.errors import InvalidInput
from idcscan.core.labels import GroundTruth, parse_labels
from idcscan.core.slides import open_slide
from tests.conftest import SAMPLE_SVS

FUZZ = settings(
    max_examples=int(os.environ.get("IDCSCAN_FUZZ_EXAMPLES", "100")), deadline=None, database=None
)
# Each example writes a file; a function-scoped tmp_path is reused across examples on purpose.
FILES = settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _labels_or_invalid(data: bytes) -> GroundTruth | None:
    try:
        return parse_labels(data)
    except InvalidInput:
        return None


def _slide_or_invalid(path: Path) -> None:
    """Open a slide as the API does (headers), then read it as the worker does."""
    try:
        with open_slide(path, mpp=1.0, max_pixels=10_000 * 10_000) as slide:
            width, height = slide.dimensions
            slide.read_region((0, 0), 0, (min(width, 64), min(height, 64)))
    except InvalidInput:
        pass


# -- labels ---------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes_are_labels_or_invalid_input(data: bytes) -> None:
    _labels_or_invalid(data)


@FUZZ
@given(st.sampled_from([b"{", b"[", b"\xef\xbb\xbf{", b"row,col,label\n"]), st.binary())
def test_any_bytes_after_a_labels_start_are_labels_or_invalid_input(
    start: bytes, rest: bytes
) -> None:
    _labels_or_invalid(start + rest)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "features",
                    "properties",
                    "geometry",
                    "coordinates",
                    "classification",
                    "name",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=30,
)


@FUZZ
@given(JSON)
def test_any_json_is_labels_or_invalid_input(document: Any) -> None:
    _labels_or_invalid(json.dumps(document).encode())


COORD = st.floats(-1e6, 1e6, allow_nan=False)
RING = st.lists(st.tuples(COORD, COORD), max_size=6)
POLYGON = st.lists(RING, max_size=3)
FEATURE = st.fixed_dictionaries(
    {
        "type": st.just("Feature"),
        "properties": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {
                    "classification": st.fixed_dictionaries(
                        {"name": st.sampled_from(["IDC", "idc", "Stroma"])}
                    )
                }
            ),
            st.fixed_dictionaries({"label": st.sampled_from([1, 0, "1", "IDC", "x", None])}),
            st.fixed_dictionaries({"name": st.sampled_from(["IDC", "other"])}),
        ),
        "geometry": st.one_of(
            st.none(),
            st.fixed_dictionaries({"type": st.just("Polygon"), "coordinates": POLYGON}),
            st.fixed_dictionaries(
                {"type": st.just("MultiPolygon"), "coordinates": st.lists(POLYGON, max_size=3)}
            ),
            st.fixed_dictionaries(
                {"type": st.just("Point"), "coordinates": st.tuples(COORD, COORD)}
            ),
        ),
    }
)


def _reference_polygons(document: Any) -> list[list[list[tuple[float, float]]]]:
    """The polygons a plain reading of a well-formed GeoJSON document keeps: IDC Polygons and
    MultiPolygons (the rules `parse_labels` implements on a stream)."""
    features = document["features"] if document["type"] == "FeatureCollection" else [document]
    polygons = []
    for feature in features:
        properties = feature["properties"] or {}
        classification = properties.get("classification") or {}
        label = properties.get("label", properties.get("name"))
        if not (
            str(classification.get("name")).lower() == "idc" or str(label).lower() in ("1", "idc")
        ):
            continue
        geometry = feature["geometry"] or {}
        shapes = {"Polygon": lambda c: [c], "MultiPolygon": list}.get(geometry.get("type"))
        if shapes is not None:
            for rings in shapes(geometry["coordinates"]):
                polygons.append([[(float(x), float(y)) for x, y in ring] for ring in rings])
    return polygons


@FUZZ
@given(st.lists(FEATURE, max_size=5), st.booleans())
def test_geojson_read_as_a_stream_keeps_what_a_plain_reading_keeps(
    features: list[Any], collection: bool
) -> None:
    document = (
        {"type": "FeatureCollection", "features": features}
        if collection or not features
        else features[0]
    )
    truth = parse_labels(json.dumps(document).encode())
    assert truth.labels_everywhere and truth.source == "geojson"
    got = [
        [[tuple(point) for point in ring.tolist()] for ring in rings] for rings in truth.polygons
    ]
    assert got == _reference_polygons(document)


CSV_VALUE = st.one_of(
    st.integers(-5, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " 1 ", "x", "1e999", "0", "1"]),
)


@FUZZ
@given(
    st.permutations(["label", "x", "y", "row", "col", "width", "height"]).map(lambda f: f[:4]),
    st.lists(st.lists(CSV_VALUE, min_size=0, max_size=6), max_size=8),
)
def test_any_tile_csv_is_labels_or_invalid_input(header: list[str], rows: list[list[str]]) -> None:
    text = ",".join(header) + "\n" + "".join(",".join(row) + "\n" for row in rows)
    _labels_or_invalid(text.encode())


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500), st.integers(0, 1)), max_size=20)
)
def test_a_tile_csv_keeps_every_labelled_cell(cells: list[tuple[int, int, int]]) -> None:
    text = "row,col,label\n" + "".join(f"{r},{c},{label}\n" for r, c, label in cells)
    truth = parse_labels(text.encode())
    assert truth.cells == cells and truth.source == "csv"


def test_labels_beyond_the_vertex_budget_are_refused() -> None:
    from tests.hostile import many_points_geojson

    with pytest.raises(InvalidInput) as refused:
        parse_labels(many_points_geojson(2_000_001))
    assert refused.value.code == "labels-too-large"


# -- slides ---------------------------------------------------------------------------------------

MAGIC = [
    b"",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"[Virtual Microscope Specimen]\n",
]


@FILES
@given(st.sampled_from(MAGIC), st.binary(max_size=3000))
def test_any_bytes_are_a_slide_or_invalid_input(tmp_path: Path, magic: bytes, rest: bytes) -> None:
    path = tmp_path / "upload"
    path.write_bytes(magic + rest)
    _slide_or_invalid(path)


def _real_files() -> dict[str, bytes]:
    """Small real files of each reader: Pillow's flat formats, OpenSlide's tiled TIFF and SVS."""
    import tifffile

    png, jpeg, tiff, tiled = io.BytesIO(), io.BytesIO(), io.BytesIO(), io.BytesIO()
    rgb = np.random.default_rng(0).integers(0, 255, (40, 56, 3), np.uint8)
    pixels = Image.fromarray(rgb)
    pixels.save(png, "PNG")
    pixels.save(jpeg, "JPEG", dpi=(10_000, 10_000))
    pixels.save(tiff, "TIFF", resolution=2500.0, resolution_unit=3)
    tifffile.imwrite(tiled, np.tile(rgb, (8, 8, 1)), tile=(128, 128), compression="zlib")
    return {
        "png": png.getvalue(),
        "jpeg": jpeg.getvalue(),
        "tiff": tiff.getvalue(),
        "tiled-tiff": tiled.getvalue(),
        "svs": SAMPLE_SVS.read_bytes(),
    }


REAL = _real_files()


@FILES
@given(
    st.sampled_from(sorted(REAL)),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    st.integers(0, 10**6),
)
def test_a_damaged_image_is_a_slide_or_invalid_input(
    tmp_path: Path, kind: str, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(REAL[kind])
    for at, value in flips:
        data[at % len(data)] = value
    path = tmp_path / "upload"
    path.write_bytes(bytes(data[: max(1, len(data) - cut % len(data))]))
    _slide_or_invalid(path)


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (120, 40, 90)).save(out, "PNG")
    return out.getvalue()


MEMBER = st.one_of(
    st.sampled_from(
        [
            "9/0/9_idx5_x1_y1_class0.png",
            "9/1/9_idx5_x51_y1_class1.png",
            "9/1/9_idx5_x1_y1_class0.png",
            "8/0/8_idx5_x1_y51_class0.png",
            "../9/0/9_idx5_x1_y1_class0.png",
            "/9/0/9_idx5_x1_y1_class0.png",
            "C:/9/0/9_idx5_x1_y1_class0.png",
            "9/0/notes.txt",
            "9/0/9_idx5_x0_y1_class0.png",
        ]
    ),
    st.text(max_size=20).map(lambda t: f"9/0/{t}.png"),
)
CONTENT = st.one_of(
    st.builds(_png, st.integers(1, 60), st.integers(1, 60)),
    st.binary(max_size=200),
    st.just(b"\x89PNG\r\n\x1a\n" + bytes(100)),
)


@FILES
@given(
    st.lists(st.tuples(MEMBER, CONTENT, st.booleans()), min_size=1, max_size=5),
    st.lists(st.tuples(st.integers(0, 10**5), st.integers(0, 255)), max_size=4),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_any_patch_zip_is_a_slide_or_invalid_input(
    tmp_path: Path,
    members: list[tuple[str, bytes, bool]],
    flips: list[tuple[int, int]],
    claimed_size: int | None,
) -> None:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore")  # duplicate member names are part of what is drawn
        for name, content, deflated in members:
            kind = zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED
            archive.writestr(name, content, compress_type=kind)
    data = bytearray(buffer.getvalue())
    if claimed_size is not None:  # the central directory lies about the first member's size
        directory = data.find(b"PK\x01\x02")
        struct.pack_into("<I", data, directory + 24, claimed_size)
    for at, value in flips:
        data[at % len(data)] = value
    path = tmp_path / "upload"
    path.write_bytes(bytes(data))
    _slide_or_invalid(path)


@pytest.mark.parametrize("points", [0, 1, 2])
def test_degenerate_rings_rasterise(points: int) -> None:
    """Parsed polygons of any ring length reach the rasteriser without error."""
    from idcscan.core.labels import GridGeometry

    ring = [[i * 10.0, i * 7.0] for i in range(points)]
    document = {
        "type": "Feature",
        "properties": {"label": 1},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }
    truth = parse_labels(json.dumps(document).encode())
    labels = truth.tile_labels(GridGeometry(rows=3, cols=3, tile0=50.0, stride0=50.0))
    assert labels.shape == (3, 3) and not math.isnan(float(labels.sum()))
