"""Peak memory scoring a large synthetic pyramid: 80,000 x 60,000 px at level 0 (0.5 um/px).

    python -m benchmarks.score_memory [--model M.onnx] [--keep PATH]

The slide is written tile by tile (tifffile, deflate) so that generating it needs no memory
either: levels at downsample 1, 4, 16, 64 like an Aperio SVS, tissue in smooth blobs over about a
third of the area. Scoring runs in a fresh process and reports its peak RSS (ru_maxrss), which
includes the Python interpreter, numpy, onnxruntime and the model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

WIDTH, HEIGHT, MPP = 80_000, 60_000, 0.5
DOWNSAMPLES = (1, 4, 16, 64)
TILE = 512
CELL = 500  # level-0 pixels per cell of the tissue blob map


def blob_map(seed: int = 0) -> np.ndarray:
    """Boolean tissue map, one cell per 500 level-0 px: smoothed noise above a threshold."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    rows, cols = HEIGHT // CELL, WIDTH // CELL
    noise = Image.fromarray((rng.random((rows // 8, cols // 8)) * 255).astype(np.uint8))
    smooth = noise.resize((cols, rows), Image.Resampling.BICUBIC).filter(
        ImageFilter.GaussianBlur(3)
    )
    return np.asarray(smooth) > 150


def level_tiles(blobs: np.ndarray, downsample: int) -> Iterator[np.ndarray]:
    height, width = HEIGHT // downsample, WIDTH // downsample
    yy, xx = np.mgrid[0:TILE, 0:TILE]
    texture = np.empty((TILE, TILE, 3), np.uint8)
    wave = (20 * (np.sin(xx / 6.0) + np.cos(yy / 4.0))).astype(np.int16)
    for channel, base in enumerate((190, 100, 160)):
        texture[..., channel] = np.clip(base + wave * (channel + 1) // 2, 0, 255)
    white = np.full((TILE, TILE, 3), 255, np.uint8)
    for top in range(0, height, TILE):
        for left in range(0, width, TILE):
            cy = np.minimum(((top + np.arange(TILE)) * downsample) // CELL, blobs.shape[0] - 1)
            cx = np.minimum(((left + np.arange(TILE)) * downsample) // CELL, blobs.shape[1] - 1)
            mask = blobs[np.ix_(cy, cx)]
            if not mask.any():
                yield white
            elif mask.all():
                yield texture
            else:
                yield np.where(mask[..., None], texture, white)


def write_slide(path: Path) -> None:
    import tifffile

    blobs = blob_map()
    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        for downsample in DOWNSAMPLES:
            per_cm = 10_000.0 / (MPP * downsample)
            tiff.write(
                level_tiles(blobs, downsample),
                shape=(HEIGHT // downsample, WIDTH // downsample, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="zlib",
                compressionargs={"level": 1},
                photometric="rgb",
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=0 if downsample == 1 else 1,
            )


SCORE = """
import json, resource, sys, time
from idcscan.core.onnxmodel import OnnxModel
from idcscan.core.slides import open_slide
from idcscan.worker import outputs
from idcscan.worker.pipeline import score_slide
model = OnnxModel(sys.argv[2], "cpu")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
with open_slide(sys.argv[1]) as slide:
    score = score_slide(slide, model)
files = outputs.render(score)
seconds = time.perf_counter() - start
print(json.dumps({
    "tiles": int(score.rows.size), "grid": [score.plan.grid.rows, score.plan.grid.cols],
    "level": score.plan.level, "level_mpp": score.plan.level_mpp, "seconds": round(seconds, 1),
    "tiles_per_s": round(score.rows.size / seconds, 1),
    "peak_rss_mb_after_model_load": round(before / 1024, 1),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
}))
"""


def main() -> None:
    from benchmarks._common import benchmark_model

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path)
    parser.add_argument("--keep", type=Path, help="write (or reuse) the synthetic slide here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="idcscan-mem-"))
    slide = args.keep or work / "large.tiff"
    if not slide.exists():
        start = time.perf_counter()
        write_slide(slide)
        print(
            f"wrote {slide} ({slide.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s"
        )
    model = benchmark_model(work, args.model)
    done = subprocess.run(
        [sys.executable, "-c", SCORE, str(slide), str(model)], capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(done.stderr)
    result = json.loads(done.stdout)
    result["slide_px"] = [WIDTH, HEIGHT]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
