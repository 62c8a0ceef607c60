"""What a scored slide leaves behind: heatmap PNG, IDC regions as GeoJSON for QuPath, tile CSV.

The tile rows and QuPath features are written by `idcscan.core.tilerows`, as everywhere else.

Each renderer returns bytes so that `idcscan score` writes them to a folder and the worker to
storage, through the same code.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from idcscan.core import tilerows
from idcscan.core.overlay import MISSED_COLOUR, colour_map, missed_idc, probability_rgba
from idcscan.worker.pipeline import SlideScore

HEATMAP = "heatmap.png"
GEOJSON = "annotations.geojson"
TILES_CSV = "tiles.csv"
SUMMARY = "summary.json"

OVERLAY_ALPHA = 0.55
MIN_PICTURE_SIDE = 720
"""Small slides are enlarged to this many pixels on their longer side, so a tile stays visible."""


def heatmap_png(score: SlideScore) -> bytes:
    """The slide's thumbnail with the probability of each tile over it, a legend, missed IDC."""
    thumb = Image.fromarray(score.tissue.thumbnail).convert("RGB")
    enlarge = MIN_PICTURE_SIDE / max(thumb.size)
    if enlarge > 1:
        size = (round(thumb.width * enlarge), round(thumb.height * enlarge))
        thumb = thumb.resize(size, Image.Resampling.BICUBIC)
    grid = score.probability_grid()
    threshold = score.plan.spec.threshold
    rgba = probability_rgba(
        grid, score.label_grid, threshold, alpha=int(255 * OVERLAY_ALPHA), missed_alpha=230
    )
    missed = None
    if score.label_grid is not None:
        missed = missed_idc(grid, score.label_grid, threshold)
    overlay = Image.fromarray(rgba, "RGBA").resize(thumb.size, Image.Resampling.NEAREST)
    picture = thumb.convert("RGBA")
    picture.alpha_composite(overlay)

    legend_h = 64
    canvas = Image.new("RGB", (max(picture.width, 360), picture.height + legend_h), "white")
    canvas.paste(picture.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    top = picture.height + 8
    bar_w = 200
    ramp = colour_map(np.linspace(0.0, 1.0, bar_w))[None].repeat(14, axis=0)
    canvas.paste(Image.fromarray(ramp), (10, top + 14))
    draw.text((10, top), "probability of IDC", fill="black", font=font)
    for value in (0.0, threshold, 1.0):
        x = 10 + round(value * (bar_w - 1))
        draw.line((x, top + 28, x, top + 32), fill="black")
        label = f"{value:.2f} threshold" if 0 < value < 1 else f"{value:g}"
        draw.text((x - 6, top + 34), label, fill="black", font=font)
    if missed is not None:
        draw.rectangle((230, top + 14, 244, top + 28), fill=MISSED_COLOUR, outline="black")
        draw.text((250, top + 14), f"missed IDC ({int(missed.sum())})", fill="black", font=font)
    out = io.BytesIO()
    canvas.save(out, format="PNG", compress_level=1)  # fast; the picture is small anyway
    return out.getvalue()


def _rectangles(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Cover a boolean grid with rectangles (row0, col0, row1, col1): row runs merged downwards."""
    rectangles: list[tuple[int, int, int, int]] = []
    open_runs: dict[tuple[int, int], int] = {}
    for r in range(mask.shape[0] + 1):
        runs: set[tuple[int, int]] = set()
        if r < mask.shape[0]:
            padded = np.concatenate(([False], mask[r], [False])).astype(np.int8)
            edges = np.flatnonzero(np.diff(padded))
            runs = {(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)}
        for run in list(open_runs):
            if run not in runs:
                rectangles.append((open_runs.pop(run), run[0], r, run[1]))
        for run in runs:
            open_runs.setdefault(run, r)
    return sorted(rectangles)


def idc_features(score: SlideScore) -> list[dict[str, Any]]:
    """IDC regions (tiles at or above the threshold, merged into rectangles) in level-0 pixels."""
    grid = score.plan.grid
    probability = score.probability_grid()
    positive = np.nan_to_num(probability, nan=0.0) >= score.plan.spec.threshold
    features = []
    for r0, c0, r1, c1 in _rectangles(positive):
        x0, y0 = round(c0 * grid.stride0), round(r0 * grid.stride0)
        x1 = round((c1 - 1) * grid.stride0 + grid.tile0)
        y1 = round((r1 - 1) * grid.stride0 + grid.tile0)
        measurements = {
            "tiles": (r1 - r0) * (c1 - c0),
            "max_probability": float(np.nanmax(probability[r0:r1, c0:c1])),
        }
        features.append(tilerows.idc_feature(x0, y0, x1, y1, measurements))
    return features


def geojson(score: SlideScore) -> dict[str, Any]:
    """The IDC regions as a FeatureCollection QuPath imports."""
    return tilerows.feature_collection(idc_features(score))


def geojson_bytes(score: SlideScore) -> bytes:
    return tilerows.geojson_bytes(idc_features(score))


def tiles_csv(score: SlideScore) -> bytes:
    return tilerows.score_csv(
        score.rows, score.cols, score.x, score.y, score.probability, score.labels
    )


def summary(score: SlideScore) -> dict[str, Any]:
    result = score.summary.as_dict()
    result["confusion"] = score.confusion.as_dict() if score.confusion is not None else None
    return result


def render(score: SlideScore) -> dict[str, bytes]:
    """Every output file, by name."""
    return {
        HEATMAP: heatmap_png(score),
        GEOJSON: geojson_bytes(score),
        TILES_CSV: tiles_csv(score),
        SUMMARY: json.dumps(summary(score), indent=2).encode(),
    }
