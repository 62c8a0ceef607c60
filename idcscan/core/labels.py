"""Ground truth for a slide, turned into one label per tile of a scoring grid.

Three sources: the patch layout's labelled squares, GeoJSON annotations (QuPath's export; IDC
features are those classified "IDC"), and a tile CSV (`x,y[,width,height],label` in level-0
pixels, or `row,col,label` on the scoring grid). A tile is positive when at least half of it is
covered by IDC; it is labelled at all when at least half of it is covered by labelled area (with
GeoJSON, the whole slide is labelled: what is not IDC is not IDC).

Labels come from clients, so `parse_labels` reads them as a stream within budgets: JSON through
ijson's event parser (never a whole document tree in memory, nesting at most `MAX_JSON_DEPTH`
deep), a CSV line by line (each at most `MAX_CSV_LINE_BYTES`), holding at most
`MAX_LABEL_VERTICES` polygon vertices (16 bytes each) and `MAX_LABEL_ROWS` rows. Whatever is wrong
with them is an `InvalidInput` with fixed text, never another exception.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import ijson
import numpy as np
from PIL import Image, ImageDraw

from idcscan.core.errors import InvalidInput

UNLABELLED = -1
# Raster of the coverage test: this many pixels per grid step, fewer on huge grids.
RASTER_PX_PER_STEP = 16
RASTER_MAX_PIXELS = 64 * 1024 * 1024
# Budgets of a labels file. A slide's grid has at most some 100,000 tiles and a detailed QuPath
# annotation some 100,000 vertices; these allow many times that in under 100 MB.
MAX_JSON_DEPTH = 64
MAX_LABEL_VERTICES = 2_000_000
MAX_LABEL_ROWS = 500_000
MAX_CSV_LINE_BYTES = 4096
# Coordinates beyond this many pixels are no slide's (and overflow the rasteriser's integers).
MAX_COORDINATE = 2.0**31
READ_CHUNK = 64 * 1024
LABELS_SUFFIX = {"geojson": ".geojson", "csv": ".csv"}


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


Ring = np.ndarray
"""(n, 2) float64: a polygon ring's vertices, x and y in level-0 pixels."""


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
    source: str = ""
    """What the labels were read from: "geojson", "csv" or "patch-layout"."""

    @property
    def suffix(self) -> str:
        """The suffix a labels file of this kind is stored under."""
        return LABELS_SUFFIX.get(self.source, "")

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
            x0, y0 = round(r.x * s), round(r.y * s)
            x1, y1 = round((r.x + r.width) * s), round((r.y + r.height) * s)
            # A sliver thinner than a raster pixel (a dataset's edge patch) rounds to nothing:
            # it covers no tile, and Pillow refuses an inverted rectangle.
            if x1 > x0 and y1 > y0:
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=1)
        for rings in polygons:
            for i, ring in enumerate(rings):
                if len(ring) >= 3:
                    # Pillow fills boundary pixels: shift to pixel centres so edges round fairly.
                    draw.polygon((ring * s - 0.5).ravel().tolist(), fill=1 if i == 0 else 0)
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


def _bad(detail: str) -> InvalidInput:
    return InvalidInput(detail, "bad-labels")


def _too_large() -> InvalidInput:
    return InvalidInput(
        f"The labels hold more than {MAX_LABEL_VERTICES} polygon vertices or "
        f"{MAX_LABEL_ROWS} rows.",
        "labels-too-large",
    )


def _coordinate(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise _bad("A GeoJSON coordinate is not a number.") from None
    if not (math.isfinite(number) and abs(number) <= MAX_COORDINATE):
        raise _bad("A GeoJSON coordinate is not a finite pixel position.")
    return number


# -- GeoJSON, as a stream of parse events -------------------------------------------------------
#
# Each JSON container is read by a handler chosen by where it lies (root, a feature, its
# properties, its geometry, its coordinates; anything else is skipped). Values of interest are
# kept until their feature ends; then an IDC polygon is kept as (n, 2) arrays and the rest let go.

_CONTAINER = object()
"""A label or class name that was a JSON array or object: never IDC."""
_MALFORMED = object()
"""Coordinates of the wrong shape: an error only if the feature turns out to be an IDC polygon."""


class _Budget:
    def __init__(self) -> None:
        self.vertices = 0

    def spend(self) -> None:
        self.vertices += 1
        if self.vertices > MAX_LABEL_VERTICES:
            raise _too_large()


class _Handler:
    """Reads one JSON container; `key` is the current key of an object."""

    key: str | None = None

    def child(self, kind: str) -> _Handler:
        """The handler of a container starting at the current key (or array position)."""
        return _Skip()

    def scalar(self, kind: str, value: Any) -> None:
        """A scalar at the current key (or array position)."""

    def close(self) -> None:
        """The container ended."""


class _Skip(_Handler):
    pass


class _Feature:
    """What one feature says, gathered in whatever order its keys come."""

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget
        self.class_name: Any = None
        self.label: Any = None
        self.has_label = False
        self.name: Any = None
        self.geometry_type: Any = None
        self.coordinates: Any = None
        self.geometry_malformed = False
        self.vertices = 0

    def is_idc(self) -> bool:
        label = self.label if self.has_label else self.name
        return str(self.class_name).lower() == "idc" or str(label).lower() in ("1", "idc")

    def polygons(self) -> list[list[np.ndarray]]:
        """The polygons of an IDC feature: none for other geometry types or without coordinates."""
        if self.geometry_malformed:
            raise _bad("A GeoJSON feature's geometry is not an object.")
        coords = self.coordinates
        if self.geometry_type not in ("Polygon", "MultiPolygon") or coords is None:
            return []
        if coords is _MALFORMED:
            raise _bad("A GeoJSON polygon is malformed.")
        shapes = [coords] if self.geometry_type == "Polygon" else coords
        polygons = []
        for rings in shapes:
            if not isinstance(rings, list):
                raise _bad("A GeoJSON polygon is malformed.")
            ring_arrays = []
            for ring in rings:
                if isinstance(ring, list) and not ring:
                    ring_arrays.append(np.empty((0, 2)))
                elif isinstance(ring, np.ndarray):
                    ring_arrays.append(ring)
                else:
                    raise _bad("A GeoJSON polygon is malformed.")
            polygons.append(ring_arrays)
        return polygons


class _Classification(_Handler):
    def __init__(self, feature: _Feature) -> None:
        self.feature = feature

    def child(self, kind: str) -> _Handler:
        if self.key == "name":
            self.feature.class_name = _CONTAINER
        return _Skip()

    def scalar(self, kind: str, value: Any) -> None:
        if self.key == "name":
            self.feature.class_name = value


class _Properties(_Handler):
    def __init__(self, feature: _Feature) -> None:
        self.feature = feature

    def child(self, kind: str) -> _Handler:
        if self.key == "classification":
            if kind == "start_map":
                return _Classification(self.feature)
            self.feature.class_name = _CONTAINER
        elif self.key in ("label", "name"):
            self.scalar(kind, _CONTAINER)
        return _Skip()

    def scalar(self, kind: str, value: Any) -> None:
        if self.key == "classification":
            self.feature.class_name = value if value else None
        elif self.key == "label":
            self.feature.label, self.feature.has_label = value, True
        elif self.key == "name":
            self.feature.name = value


class _Coordinates(_Handler):
    """One array inside `coordinates`: a position (numbers), a ring (positions, kept as one
    (n, 2) array) or a list of those; anything else makes the coordinates malformed."""

    def __init__(self, feature: _Feature, parent: _Coordinates | _Geometry) -> None:
        self.feature, self.parent = feature, parent
        self.numbers: list[float] = []
        self.count = 0
        self.ring = array("d")
        self.items: list[Any] = []
        self.malformed = False

    def child(self, kind: str) -> _Handler:
        if kind == "start_array":
            return _Coordinates(self.feature, self)
        self.malformed = True
        return _Skip()

    def scalar(self, kind: str, value: Any) -> None:
        if kind != "number" or self.ring or self.items:
            self.malformed = True
            return
        self.count += 1
        if self.count <= 2:  # x and y; a z (or more) is read past
            self.numbers.append(_coordinate(value))

    def add(self, child: _Coordinates) -> None:
        value = child.value()
        if value is _MALFORMED:
            self.malformed = True
        elif isinstance(value, tuple):  # a position
            if self.items or self.count:
                self.malformed = True
                return
            self.ring.extend(value)
            self.feature.vertices += 1
            self.feature.budget.spend()
        elif self.ring or self.count:
            self.malformed = True
        else:
            self.items.append(value)

    def value(self) -> Any:
        if self.malformed:
            return _MALFORMED
        if self.count:
            return (self.numbers[0], self.numbers[1]) if self.count >= 2 else _MALFORMED
        if self.ring:
            return np.frombuffer(self.ring, dtype=np.float64).reshape(-1, 2)
        return self.items

    def close(self) -> None:
        self.parent.add(self)


class _Geometry(_Handler):
    def __init__(self, feature: _Feature) -> None:
        self.feature = feature

    def child(self, kind: str) -> _Handler:
        if self.key == "coordinates" and kind == "start_array":
            return _Coordinates(self.feature, self)
        return _Skip()

    def scalar(self, kind: str, value: Any) -> None:
        if self.key == "type":
            self.feature.geometry_type = value

    def add(self, coordinates: _Coordinates) -> None:
        value = coordinates.value()
        # A position or a ring as the whole of `coordinates` is no polygon.
        self.feature.coordinates = value if isinstance(value, list) else _MALFORMED


class _FeatureMap(_Handler):
    """A feature object; `keep` receives its IDC polygons when it ends."""

    def __init__(self, budget: _Budget, keep: list[list[np.ndarray]]) -> None:
        self.feature = _Feature(budget)
        self.keep = keep

    def child(self, kind: str) -> _Handler:
        if self.key == "properties":
            if kind != "start_map":
                raise _bad("A GeoJSON feature's properties are not an object.")
            return _Properties(self.feature)
        if self.key == "geometry":
            if kind == "start_map":
                return _Geometry(self.feature)
            self.feature.geometry_malformed = True
        return _Skip()

    def scalar(self, kind: str, value: Any) -> None:
        if self.key == "properties" and kind != "null":
            raise _bad("A GeoJSON feature's properties are not an object.")
        if self.key == "geometry" and kind != "null":
            self.feature.geometry_malformed = True

    def close(self) -> None:
        feature = self.feature
        if feature.is_idc():
            self.keep.extend(feature.polygons())
        else:  # not kept: its vertices no longer count against the budget
            feature.budget.vertices -= feature.vertices


class _FeatureList(_Handler):
    def __init__(self, budget: _Budget, keep: list[list[np.ndarray]]) -> None:
        self.budget, self.keep = budget, keep

    def child(self, kind: str) -> _Handler:
        # Items that are not objects are not features; they are passed over, as before.
        return _FeatureMap(self.budget, self.keep) if kind == "start_map" else _Skip()


class _Root(_Handler):
    """Below the document: a FeatureCollection, a single Feature, or a bare list of features."""

    def __init__(self) -> None:
        self.budget = _Budget()
        self.polygons: list[list[np.ndarray]] = []
        """IDC polygons of a bare list's features, or of the root Feature."""
        self.collection: list[list[np.ndarray]] = []
        """IDC polygons of a FeatureCollection's features."""
        self.is_object = False
        self.type: Any = None
        self.features_malformed = False

    def child(self, kind: str) -> _Handler:
        if kind == "start_array":
            return _FeatureList(self.budget, self.polygons)
        self.is_object = True
        return _RootObject(self)

    def scalar(self, kind: str, value: Any) -> None:
        raise _bad("The labels are JSON but not a GeoJSON FeatureCollection.")

    def result(self) -> list[list[np.ndarray]]:
        if not self.is_object:
            return self.polygons
        if self.type == "FeatureCollection":
            if self.features_malformed:
                raise _bad("A GeoJSON FeatureCollection's features are not a list.")
            return self.collection
        if self.type == "Feature":
            return self.polygons
        raise _bad("The labels are JSON but not a GeoJSON FeatureCollection.")


class _RootObject(_Handler):
    """The root object, read both as a FeatureCollection and as a Feature until its type says."""

    def __init__(self, root: _Root) -> None:
        self.root = root
        self.feature = _FeatureMap(root.budget, root.polygons)

    def child(self, kind: str) -> _Handler:
        if self.key == "features":
            if kind == "start_array":
                return _FeatureList(self.root.budget, self.root.collection)
            self.root.features_malformed = True
            return _Skip()
        self.feature.key = self.key
        return self.feature.child(kind)

    def scalar(self, kind: str, value: Any) -> None:
        if self.key == "type":
            self.root.type = value
        elif self.key == "features":
            self.root.features_malformed = kind != "null"
        else:
            self.feature.key = self.key
            self.feature.scalar(kind, value)

    def close(self) -> None:
        if self.root.type == "Feature":
            self.feature.close()


def _from_geojson(chunks: Iterator[bytes]) -> list[list[np.ndarray]]:
    root = _Root()
    stack: list[_Handler] = [root]
    events = ijson.sendable_list()
    parser = ijson.basic_parse_coro(events, use_float=True)

    def handle() -> None:
        for kind, value in events:
            top = stack[-1]
            if kind == "map_key":
                top.key = value
            elif kind in ("start_map", "start_array"):
                if len(stack) > MAX_JSON_DEPTH:
                    raise _bad(f"The labels nest deeper than {MAX_JSON_DEPTH} levels.")
                stack.append(top.child(kind))
            elif kind in ("end_map", "end_array"):
                stack.pop().close()
            else:
                top.scalar(kind, value)
        del events[:]

    try:
        for chunk in chunks:
            parser.send(chunk)
            handle()
        parser.close()
        handle()
    except ijson.JSONError as exc:
        raise _bad("The labels are not valid JSON.") from exc
    except (ValueError, OverflowError) as exc:  # a number ijson cannot convert
        raise _bad("The labels hold a number that is not one.") from exc
    return root.result()


# -- tile CSV, line by line ---------------------------------------------------------------------


def _csv_lines(stream: IO[bytes]) -> Iterator[str]:
    while raw := stream.readline(MAX_CSV_LINE_BYTES + 1):
        if len(raw) > MAX_CSV_LINE_BYTES:
            raise _bad(f"A tile CSV line is longer than {MAX_CSV_LINE_BYTES} bytes.")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("The labels are neither GeoJSON nor CSV text.") from None


def _int(value: str, what: str) -> int:
    try:
        number = float(value)
    except ValueError:
        raise _bad(f"Tile CSV: a {what} is not a number.") from None
    if not (math.isfinite(number) and abs(number) <= MAX_COORDINATE):
        raise _bad(f"Tile CSV: a {what} is not a finite number of pixels.")
    return round(number)


def _from_csv(stream: IO[bytes]) -> GroundTruth:
    reader = csv.reader(_csv_lines(stream))
    try:
        header = next(reader, None)
        fields = {name.strip().lower(): i for i, name in enumerate(header or [])}
        if "label" not in fields or not (
            {"x", "y"} <= fields.keys() or {"row", "col"} <= fields.keys()
        ):
            raise _bad("A tile CSV needs a header with label and x,y (level-0 pixels) or row,col.")
        truth = GroundTruth(source="csv")
        for count, row in enumerate(reader):
            if count >= MAX_LABEL_ROWS:
                raise _too_large()
            cell = {name: row[i].strip() if i < len(row) else "" for name, i in fields.items()}
            if cell["label"] == "":
                continue
            label = _int(cell["label"], "label")
            if label not in (0, 1):
                raise _bad("Tile CSV: a label is neither 0 nor 1.")
            if cell.get("x") and cell.get("y"):
                x, y = _int(cell["x"], "x"), _int(cell["y"], "y")
                if cell.get("width") and cell.get("height"):
                    width, height = _int(cell["width"], "width"), _int(cell["height"], "height")
                    if width < 0 or height < 0:
                        raise _bad("Tile CSV: a width or height is negative.")
                    truth.rects.append(LabelledRect(x, y, width, height, label))
                else:
                    truth.points.append((x, y, label))
            elif cell.get("row") and cell.get("col"):
                truth.cells.append((_int(cell["row"], "row"), _int(cell["col"], "col"), label))
            else:
                raise _bad("Tile CSV: a labelled row has neither x,y nor row,col.")
    except csv.Error as exc:
        raise _bad("The tile CSV is malformed.") from exc
    return truth


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(READ_CHUNK):
        yield chunk


def parse_labels(source: bytes | IO[bytes]) -> GroundTruth:
    """Ground truth from a GeoJSON document or a tile CSV: its bytes, or a seekable binary file
    read as a stream (the file is never held whole)."""
    stream: IO[bytes] = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    start = stream.tell()
    head = stream.read(4096)
    skip = len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0
    stream.seek(start + skip)
    if head[skip:].lstrip()[:1] in (b"{", b"["):
        return GroundTruth(
            polygons=_from_geojson(_chunks(stream)), labels_everywhere=True, source="geojson"
        )
    return _from_csv(stream)


def from_regions(regions: tuple[LabelledRect, ...]) -> GroundTruth:
    return GroundTruth(rects=list(regions), source="patch-layout")
