"""`idcscan assemble`: a patient's patches as a tiled, pyramidal TIFF at the dataset's 4 um/px.

The patches go back to their X/Y on a white canvas (the dataset never cut background); the pyramid
halves down to a few hundred pixels; the pixel size goes into the TIFF resolution tags, which
OpenSlide reports as `openslide.mpp-x`. The ground truth lands beside the TIFF as QuPath GeoJSON
(`SLIDE.geojson`, IDC regions) and a tile CSV (`SLIDE.tiles.csv`, every patch with its label).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from idcscan.core import tilerows
from idcscan.core.slides import PatchSlide
from idcscan.core.tiles import DATASET_MPP, DATASET_TILE_SIZE

TIFF_TILE = 256
SMALLEST_LEVEL_PX = 512


@dataclass(frozen=True)
class Assembled:
    tiff: Path
    geojson: Path
    tiles_csv: Path
    width: int
    height: int
    levels: int
    patches: int
    idc_patches: int


def write_pyramid(pixels: np.ndarray, out: Path, mpp: float) -> int:
    """RGB uint8 -> tiled pyramidal TIFF (deflate), each level half the previous; returns levels."""
    import tifffile

    out.parent.mkdir(parents=True, exist_ok=True)
    levels = 0
    image = Image.fromarray(pixels)
    with tifffile.TiffWriter(out, bigtiff=pixels.nbytes > 2**31) as tiff:
        level = pixels
        downsample = 1
        while True:
            per_cm = 10_000.0 / (mpp * downsample)
            tiff.write(
                level,
                tile=(TIFF_TILE, TIFF_TILE),
                compression="zlib",
                photometric="rgb",
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=0 if downsample == 1 else 1,
                metadata=None,
            )
            levels += 1
            if max(level.shape[:2]) <= SMALLEST_LEVEL_PX:
                return levels
            downsample *= 2
            size = (max(1, pixels.shape[1] // downsample), max(1, pixels.shape[0] // downsample))
            level = np.asarray(image.resize(size, Image.Resampling.BOX))


def assemble(patient_dir: Path, out: Path) -> Assembled:
    slide = PatchSlide(patient_dir, mpp=None, max_pixels=2**40)
    try:
        regions = slide.regions or ()
        width, height = slide.dimensions
        levels = write_pyramid(slide.canvas, out, DATASET_MPP)
    finally:
        slide.close()
    geojson_path = out.with_suffix(".geojson")
    csv_path = out.with_suffix(".tiles.csv")
    features = [
        tilerows.idc_feature(r.x, r.y, r.x + r.width, r.y + r.height)
        for r in regions
        if r.label == 1
    ]
    geojson_path.write_bytes(tilerows.geojson_bytes(features))
    patches = (
        {
            "row": r.y // DATASET_TILE_SIZE,
            "col": r.x // DATASET_TILE_SIZE,
            "x": r.x,
            "y": r.y,
            "width": r.width,
            "height": r.height,
            "label": r.label,
        }
        for r in sorted(regions, key=lambda r: (r.y, r.x))
    )
    with open(csv_path, "wb") as handle:
        for chunk in tilerows.csv_chunks(patches, tilerows.TRUTH_COLUMNS):
            handle.write(chunk)
    return Assembled(
        tiff=out,
        geojson=geojson_path,
        tiles_csv=csv_path,
        width=width,
        height=height,
        levels=levels,
        patches=len(regions),
        idc_patches=sum(r.label for r in regions),
    )
