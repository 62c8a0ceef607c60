"""Shared by the scoring benchmarks: which model, which slide, how to time."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The full dataset, where a developer has it (IDCSCAN_BENCH_DATASET, else the development layout's
# ../shared/data/idc); the bundled samples otherwise.
DATASET = Path(os.environ.get("IDCSCAN_BENCH_DATASET", ROOT.parent / "shared" / "data" / "idc"))


def benchmark_model(work: Path, requested: Path | None = None) -> Path:
    """The given model, else the reference model, else a 3-block CNN with the tile contract."""
    from idcscan.core.onnxmodel import reference_model

    if requested:
        return requested
    if reference_model().exists():
        return reference_model()
    from tests.worker.models import build_benchmark_model

    return build_benchmark_model(work / "bench-cnn.onnx")


def patient_dir(patient: str) -> Path:
    for root in (DATASET, ROOT / "samples" / "idc"):
        if (root / patient).is_dir():
            return root / patient
    raise SystemExit(
        f"patient {patient} not found under {DATASET} or samples/idc: set IDCSCAN_BENCH_DATASET "
        "to the dataset's folder, or use a bundled patient (--patient 9125)"
    )


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times
