"""Ground truth for a slide, turned into one label per tile of a scoring grid.

Three sources: the patch layout's labelled squares, GeoJSON annotations (QuPath's export; IDC
features are those classified "IDC"), and a tile CSV (`x,y[,width,height],label` in level-0
pixels, or `row,col,label` on the scoring grid). A tile is positive when at least half of it is
covered by IDC; it is labelled at all when at least half of it is covered by labelled area (with
GeoJSON, the whole slide is labelled: what is not IDC is not IDC).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from idcscan.core.errors import InvalidInput

UNLABELLED = -1
# Raster of the coverage test: this many pixels per grid step, fewer on huge grids.
RASTER_PX_PER_STEP = 16
RASTER_MAX_PIXELS = 64 * 1024 * 1024


@dataclass(frozen=True)
class LabelledRect:
    """An axis-aligned labelled square (a dataset patch) in level-0 pixels."""

    x: int
    y: int
    width: int
    height: int
    label: int


@dataclass(frozen=True)
class GridGeometry:
    """A tile grid in level-0 pixels: tile (row, col) spans [col*stride0, col*stride0 + tile0)."""

    rows: int
    cols: int
    tile0: float
    stride0: float

    def origins(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-left level-0 pixel (x, y) of tiles."""
        return (
            np.rint(np.asarray(cols) * self.stride0).astype(np.int64),
            np.rint(np.asarray(rows) * self.stride0).astype(np.int64),
        )


Ring = list[tuple[float, float]]


@dataclass
class GroundTruth:
    rects: list[LabelledRect] = field(default_factory=list)
    polygons: list[list[Ring]] = field(default_factory=list)
    """IDC polygons: exterior ring first, holes after (GeoJSON order)."""
    cells: list[tuple[int, int, int]] = field(default_factory=list)
    """(row, col, label) given directly on the scoring grid."""
    points: list[tuple[float, float, int]] = field(default_factory=list)
    """(x, y, label) tile origins in level-0 pixels, snapped to the nearest grid tile."""
    labels_everywhere: bool = False
    """True for GeoJSON: tiles not covered by IDC are negatives."""

    def tile_labels(self, grid: GridGeometry) -> np.ndarray:
        """int8 (rows, cols): 1 IDC, 0 not IDC, -1 no ground truth."""
        labels = np.full((grid.rows, grid.cols), UNLABELLED, dtype=np.int8)
        if self.labels_everywhere:
            labels[:] = 0
        if self.rects or self.polygons:
            raster = _Raster(grid)
            if self.rects:
                labelled = raster.coverage(rects=self.rects)
                labels[labelled >= 0.5] = 0
            positive = raster.coverage(
                rects=[r for r in self.rects if r.label == 1], polygons=self.polygons
            )
            labels[positive >= 0.5] = 1
        for row, col, label in self.cells:
            if 0 <= row < grid.rows and 0 <= col < grid.cols:
                labels[row, col] = label
        for x, y, label in self.points:
            row, col = round(y / grid.stride0), round(x / grid.stride0)
            if 0 <= row < grid.rows and 0 <= col < grid.cols:
                labels[row, col] = label
        return labels


class _Raster:
    """Rasterises shapes over a grid and measures each tile's covered fraction (integral image)."""

    def __init__(self, grid: GridGeometry) -> None:
        self.grid = grid
        span = max(grid.tile0 / grid.stride0, 1.0)
        k = RASTER_PX_PER_STEP
        while k > 1 and (grid.rows + span) * (grid.cols + span) * k * k > RASTER_MAX_PIXELS:
            k //= 2
        self.k = k
        self.scale = k / grid.stride0
        self.tile_px = max(1, round(grid.tile0 * self.scale))
        self.size = (grid.cols * k + self.tile_px, grid.rows * k + self.tile_px)

    def coverage(
        self, rects: Sequence[LabelledRect] = (), polygons: Sequence[list[Ring]] = ()
    ) -> np.ndarray:
        image = Image.new("L", self.size, 0)
        draw = ImageDraw.Draw(image)
        s = self.scale
        for r in rects:
            x0, y0 = r.x * s, r.y * s
            x1, y1 = (r.x + r.width) * s, (r.y + r.height) * s
            draw.rectangle((round(x0), round(y0), round(x1) - 1, round(y1) - 1), fill=1)
        for rings in polygons:
            for i, ring in enumerate(rings):
                if len(ring) >= 3:
                    # Pillow fills boundary pixels: shift to pixel centres so edges round fairly.
                    draw.polygon(
                        [(x * s - 0.5, y * s - 0.5) for x, y in ring], fill=1 if i == 0 else 0
                    )
        mask = np.asarray(image, dtype=np.uint32)
        integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.uint32)
        integral[1:, 1:] = mask.cumsum(0).cumsum(1)
        k, t = self.k, self.tile_px
        top = np.arange(self.grid.rows, dtype=np.intp) * k
        left = np.arange(self.grid.cols, dtype=np.intp) * k
        bottom, right = top + t, left + t
        covered = (
            integral[np.ix_(bottom, right)]
            - integral[np.ix_(top, right)]
            - integral[np.ix_(bottom, left)]
            + integral[np.ix_(top, left)]
        )
        return covered.astype(np.float64) / float(t * t)


def _is_idc(properties: dict[str, Any]) -> bool:
    classification = properties.get("classification") or {}
    name = classification.get("name") if isinstance(classification, dict) else classification
    label = properties.get("label", properties.get("name"))
    return str(name).lower() == "idc" or str(label).lower() in ("1", "idc")


def from_geojson(data: Any) -> GroundTruth:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):  # QuPath also exports a bare list of features
        features = data
    else:
        raise InvalidInput("labels are JSON but not a GeoJSON FeatureCollection", "bad-labels")
    truth = GroundTruth(labels_everywhere=True)
    for feature in features:
        if not isinstance(feature, dict) or not _is_idc(feature.get("properties") or {}):
            continue
        geometry = feature.get("geometry") or {}
        kind, coords = geometry.get("type"), geometry.get("coordinates")
        if not isinstance(coords, list):
            continue
        try:
            if kind == "Polygon":
                shapes = [coords]
            elif kind == "MultiPolygon":
                shapes = list(coords)
            else:
                continue
            for rings in shapes:
                truth.polygons.append(
                    [[(float(x), float(y)) for x, y, *_ in ring] for ring in rings]
                )
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"a GeoJSON polygon is malformed: {exc}", "bad-labels") from exc
    return truth


def _int(value: str, what: str) -> int:
    try:
        number = float(value)
    except ValueError as exc:
        raise InvalidInput(f"tile CSV: {what} {value!r} is not a number", "bad-labels") from exc
    if not math.isfinite(number):
        raise InvalidInput(f"tile CSV: {what} {value!r} is not finite", "bad-labels")
    return round(number)


def from_csv(text: str) -> GroundTruth:
    reader = csv.DictReader(io.StringIO(text))
    fields = {f.strip().lower() for f in reader.fieldnames or []}
    if "label" not in fields or not ({"x", "y"} <= fields or {"row", "col"} <= fields):
        raise InvalidInput(
            "a tile CSV needs a header with label and x,y (level-0 pixels) or row,col", "bad-labels"
        )
    truth = GroundTruth()
    for raw in reader:
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        if row["label"] == "":
            continue
        label = _int(row["label"], "label")
        if label not in (0, 1):
            raise InvalidInput(
                f"tile CSV: label must be 0 or 1, got {row['label']!r}", "bad-labels"
            )
        if row.get("x") and row.get("y"):
            x, y = _int(row["x"], "x"), _int(row["y"], "y")
            if row.get("width") and row.get("height"):
                truth.rects.append(
                    LabelledRect(
                        x, y, _int(row["width"], "width"), _int(row["height"], "height"), label
                    )
                )
            else:
                truth.points.append((x, y, label))
        else:
            truth.cells.append((_int(row["row"], "row"), _int(row["col"], "col"), label))
    return truth


def parse_labels(data: bytes) -> GroundTruth:
    """Ground truth from the bytes of a GeoJSON document or a tile CSV."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput("labels are neither GeoJSON nor CSV text", "bad-labels") from exc
    if text.lstrip().startswith(("{", "[")):
        try:
            return from_geojson(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"labels are not valid JSON: {exc}", "bad-labels") from exc
    return from_csv(text)


def from_regions(regions: tuple[LabelledRect, ...]) -> GroundTruth:
    return GroundTruth(rects=list(regions))
