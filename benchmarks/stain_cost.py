"""What the out-of-distribution check costs: scoring tiles/s with and without the stain figures.

    python -m benchmarks.stain_cost [--repeats 5]

Each slide (the sample slide CMU-1, and sample patient 9125 as a pseudo-slide, more tiles) is
scored in-process by `score_slide` with the reference model, once as shipped and once with the
per-tile stain figures replaced by a constant (nothing computed); and `tile_features` is timed
alone on the same tiles. The figures are taken in the reader thread, beside preprocessing, so on
a machine with a core to spare they cost little wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from unittest import mock

import numpy as np

from benchmarks._common import ROOT, median_time
from idcscan.core.onnxmodel import OnnxModel, reference_model
from idcscan.core.slides import open_slide
from idcscan.core.stain import FEATURES, tile_features
from idcscan.worker import pipeline
from idcscan.worker.tiling import find_tissue, iter_tile_blocks, plan_tiling

SLIDES = {
    "CMU-1-Small-Region.svs": ROOT / "samples" / "wsi" / "CMU-1-Small-Region.svs",
    "patient 9125 (pseudo-slide)": ROOT / "samples" / "idc" / "9125",
}


def no_features(tiles: np.ndarray) -> np.ndarray:
    return np.full((len(tiles), len(FEATURES)), np.nan, dtype=np.float32)


def measure(path: Path, model: OnnxModel, repeats: int) -> dict[str, float]:
    with open_slide(path) as slide:
        plan = plan_tiling(slide, model.spec)
        tiles = np.concatenate(
            [b.tiles for b in iter_tile_blocks(slide, plan, find_tissue(slide, plan).tissue)]
        )

        def score() -> object:
            return pipeline.score_slide(slide, model)

        # Alternated, so that a neighbour's load on a shared machine weighs on both alike.
        with_check, without = [], []
        for _ in range(repeats):
            with_check.append(median_time(score, 1)[0])
            with mock.patch.object(pipeline, "tile_features", no_features):
                without.append(median_time(score, 1)[0])
    alone, _ = median_time(lambda: tile_features(tiles), repeats)
    return {
        "tiles": len(tiles),
        "tiles_per_s_with_check": len(tiles) / statistics.median(with_check),
        "tiles_per_s_without": len(tiles) / statistics.median(without),
        "tile_features_alone_tiles_per_s": len(tiles) / alone,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = OnnxModel(reference_model(), provider="cpu")
    results = {name: measure(path, model, args.repeats) for name, path in SLIDES.items()}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
