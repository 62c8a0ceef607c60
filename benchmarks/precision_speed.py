"""Tiles/s of a model's precision variants against its FP32 file, same process, same tiles.

    python -m benchmarks.precision_speed [--model M] [--patient 9125] [--rounds 9] [--threads 0]
        [--fp16]

The variants lie beside the model (`idcscan models variants`); the tiles are one patient's
patches (the dataset's, or a bundled sample). Every round runs each model once on all tiles, in
turn, so that a neighbour's load on a shared machine falls on all of them alike; reported: the
best and the median tiles/s of each, and each variant's ratio to FP32 by best, by median and as
the median of the per-round ratios. FP16 is for GPUs: `--fp16` times onnxruntime's CPU emulation
of it, which says nothing of its GPU speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks._common import patient_dir
from idcscan.core.onnxmodel import OnnxModel, reference_model
from idcscan.core.variants import variant_path
from idcscan.trainer.data import load_patches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=reference_model())
    parser.add_argument("--patient", default="9125")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all)")
    parser.add_argument("--fp16", action="store_true", help="also time FP16 on the CPU")
    args = parser.parse_args()

    folder = patient_dir(args.patient)
    tiles = load_patches(folder.parent, [folder.name]).tiles
    names = ["fp32", "int8"] + (["fp16"] if args.fp16 else [])
    paths = {n: args.model if n == "fp32" else variant_path(args.model, n) for n in names}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise SystemExit(
            f"no such variant: {', '.join(missing)} (make them: idcscan models variants)"
        )
    models = {n: OnnxModel(p, provider="cpu", threads=args.threads) for n, p in paths.items()}
    for model in models.values():
        model.predict(tiles[:256])  # warm-up
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.predict(tiles)
            seconds[name].append(time.perf_counter() - start)
    report: dict[str, object] = {
        "model": args.model.name,
        "tiles": len(tiles),
        "rounds": args.rounds,
    }
    for name in names:
        report[name] = {
            "bytes": paths[name].stat().st_size,
            "tiles_per_s_best": round(len(tiles) / min(seconds[name])),
            "tiles_per_s_median": round(len(tiles) / statistics.median(seconds[name])),
        }
        if name != "fp32":
            fp32 = seconds["fp32"]
            report[name] |= {  # type: ignore[operator]
                "ratio_best": round(min(fp32) / min(seconds[name]), 2),
                "ratio_median": round(
                    statistics.median(fp32) / statistics.median(seconds[name]), 2
                ),
                "ratio_median_of_rounds": round(
                    statistics.median(f / v for f, v in zip(fp32, seconds[name], strict=True)), 2
                ),
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
