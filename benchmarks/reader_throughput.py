"""The slide reader alone: tiles/s read, cut and preprocessed by a pool of 1, 2, 4... threads.

    python -m benchmarks.reader_throughput [--patient 9077 | --full-slide-scale 0.25]
                                           [--readers 1 2 4] [--repeats 5] [--model M.onnx]

What the scoring pipeline's reader does (`pipeline.read_blocks`: regions read, resampled, cut, the
model input made per the model's tile contract, the stain figures taken), with no inference: the
ceiling the reader sets on `idcscan score`. Each pool size is timed once per round and the rounds
alternate, so that load from elsewhere on the machine hits every size alike; medians are reported,
and each size's ratio to one thread per round. `--input float32-nchw` measures the model input
older models take (normalised in numpy) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks._common import ROOT, benchmark_model, patient_dir


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patient", default="9077", help="patient slide (default: 9077)")
    parser.add_argument(
        "--full-slide-scale",
        type=float,
        help="read the full-size benchmark slide at this scale instead (benchmarks.full_slide)",
    )
    parser.add_argument("--cache", type=Path, default=ROOT / "var" / "bench")
    parser.add_argument("--readers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--input", choices=["model", "float32-nchw", "uint8-nhwc"], default="model")
    args = parser.parse_args()

    from idcscan.core.assemble import assemble
    from idcscan.core.onnxmodel import read_manifest
    from idcscan.core.slides import open_slide
    from idcscan.worker.pipeline import read_blocks
    from idcscan.worker.tiling import find_tissue, plan_tiling

    work = Path(tempfile.mkdtemp(prefix="idcscan-bench-"))
    if args.full_slide_scale:
        from benchmarks.full_slide import cached_slide

        slide_path = cached_slide(args.cache, args.full_slide_scale)
    else:
        slide_path = work / f"{args.patient}.tiff"
        assemble(patient_dir(args.patient), slide_path)
    spec = read_manifest(benchmark_model(work, args.model)).spec
    if args.input != "model":
        spec = replace(spec, input_format=args.input)

    with open_slide(slide_path) as slide:
        plan = plan_tiling(slide, spec)
        tissue = find_tissue(slide, plan).tissue
        tiles = int(tissue.sum())
        print(
            f"slide: {slide_path.name}, {slide.dimensions[0]} x {slide.dimensions[1]} px, "
            f"level {plan.level}, {tiles} tissue tiles; input {spec.input_format}; "
            f"cpus {os.cpu_count()}"
        )
        for readers in args.readers:  # warm-up: the OS cache and OpenSlide's tile cache
            sum(len(b.rows) for b in read_blocks(slide, plan, tissue, readers))
        seconds: dict[int, list[float]] = {n: [] for n in args.readers}
        cpu: dict[int, list[float]] = {n: [] for n in args.readers}
        for _ in range(args.repeats):
            for readers in args.readers:
                wall, used = time.perf_counter(), time.process_time()
                read = sum(len(b.rows) for b in read_blocks(slide, plan, tissue, readers))
                seconds[readers].append(time.perf_counter() - wall)
                cpu[readers].append(time.process_time() - used)
                assert read == tiles, (read, tiles)
    one = args.readers[0]
    result = {
        "tiles": tiles,
        "input": spec.input_format,
        "readers": {
            str(n): {
                "tiles_per_s": round(tiles / statistics.median(seconds[n]), 1),
                f"ratio_to_{one}_per_round": [
                    round(a / b, 2) for a, b in zip(seconds[one], seconds[n], strict=True)
                ],
                "cpu_s_median": round(statistics.median(cpu[n]), 3),
            }
            for n in args.readers
        },
        "load_average_1min": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
