"""The out-of-distribution check's figures, measured through the worker's pipeline.

    python scripts/stain_calibration.py --data DATASET [--model MODEL] [--out FIGURES.json]

Every patient folder of DATASET is scored as a pseudo-slide of its patches, and so are the two
non-breast sample slides (`samples/wsi/`: CMU-1, skin; the TCGA head-and-neck frozen section at
0.5 um/px, as it records no pixel size) and the two sample patients, each by `score_slide`, with
the model's own stain reference (`idcscan models stain-reference`). It prints the distribution of
the training patients' figures, the other slides' figures and the margins to the limits:
models/MODEL_CARD.md reports them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from idcscan.core.onnxmodel import OnnxModel, reference_model
from idcscan.core.patches import patient_dirs
from idcscan.core.slides import open_slide
from idcscan.worker.pipeline import score_slide

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
OTHER_SLIDES: list[tuple[str, Path, float | None]] = [
    ("CMU-1 (skin)", SAMPLES / "wsi" / "CMU-1-Small-Region.svs", None),
    ("TCGA-CR-7395 (head and neck, frozen)", SAMPLES / "wsi" / "TCGA-CR-7395-01A-01-TS1.svs", 0.5),
    ("sample patient 8916", SAMPLES / "idc" / "8916", None),
    ("sample patient 9125", SAMPLES / "idc" / "9125", None),
]
FIGURES = ("stain_distance", "far_tile_fraction", "haematoxylin_od_sd", "eosin_od_sd")


def figures(path: Path, model: OnnxModel, mpp: float | None = None) -> dict[str, Any]:
    with open_slide(path, mpp=mpp) as slide:
        summary = score_slide(slide, model).summary
    return {
        "slide_call": summary.slide_call.value,
        "in_distribution": summary.in_distribution,
        "tissue_tiles": summary.tissue_tiles,
        **{name: getattr(summary, name) for name in FIGURES},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the training patients' folder")
    parser.add_argument("--model", type=Path, default=None, help="default: the reference model")
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON")
    args = parser.parse_args(argv)
    model = OnnxModel(args.model or reference_model(), provider="cpu")
    reference = model.manifest.stain
    if reference is None:
        print("the model carries no stain reference", file=sys.stderr)
        return 2
    training = {p.name: figures(p, model) for p in patient_dirs(args.data)}
    others = {name: figures(path, model, mpp) for name, path, mpp in OTHER_SLIDES}
    limits = {
        "stain_distance": reference.max_stain_distance,
        "far_tile_fraction": reference.max_far_tile_fraction,
    }
    flagged = sorted(p for p, f in training.items() if not f["in_distribution"])
    print(f"training patients: {len(training)}, flagged: {len(flagged)} {flagged}")
    for name in FIGURES:
        values = np.array([f[name] for f in training.values() if f[name] is not None])
        q = np.quantile(values, [0, 0.05, 0.5, 0.95, 1])
        print(
            f"  {name}: min {q[0]:.3f} p5 {q[1]:.3f} median {q[2]:.3f} p95 {q[3]:.3f} max {q[4]:.3f}"
        )
    for name, limit in limits.items():
        largest = max(f[name] for f in training.values() if f[name] is not None)
        print(f"  limit {name} {limit:.3f}: training largest {largest:.3f}")
    for name, f in others.items():
        print(
            f"{name}: {f['slide_call']}, {f['tissue_tiles']} tiles, stain distance "
            f"{f['stain_distance']:.2f} (limit {limits['stain_distance']:.2f}), far tiles "
            f"{f['far_tile_fraction']:.1%} (limit {limits['far_tile_fraction']:.1%})"
        )
    if args.out:
        args.out.write_text(json.dumps({"limits": limits, "training": training, "others": others}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
