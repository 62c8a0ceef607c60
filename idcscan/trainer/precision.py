"""Cheaper variants of an exported model at equal accuracy: INT8 for CPU workers, FP16 for GPUs.

`make_variants(MODEL, DATA)` writes `<stem>.int8.onnx` (static QDQ, `export.quantize_int8`) and
`<stem>.fp16.onnx` (onnxruntime's float16 conversion, float32 kept at the graph's edges) beside any
idcscan model, whatever its input format: every figure comes from `OnnxModel.predict` on uint8
tiles, which applies the model's own preprocessing. The data are the model's own split, read from
its identity: calibration tiles from its TRAINING patients only, figures on its VALIDATION patients.

INT8 ships only when it earns its place: validation balanced accuracy at the model's threshold at
most `MAX_BAC_DROP` below FP32, and at least `MIN_INT8_SPEEDUP` times FP32's tiles/s, measured in
this process on the same tiles. Otherwise its figures are reported and its file removed.

The speed is judged per core (one onnxruntime thread each): what a CPU fills with one
single-threaded worker process per core, and the figure that a neighbour's load on a shared
machine disturbs least. One session spread over all cores is measured too, for information.
A model that takes uint8 tiles is quantized so that the tiles are its first quantized tensor
(`integerinput`): its float normalisation would otherwise take a third of INT8's time. FP16 is
for GPU workers: its figures come from onnxruntime's CPU provider; its speed needs a GPU.
Each variant carries its figures, beside FP32's, in its identity (`precision`); the FP32 file is
left as it is, so its hash (its registry identity) does not change.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from idcscan.core.metrics import Confusion
from idcscan.core.onnxmodel import IDENTITY_KEY, OnnxModel, file_sha256
from idcscan.core.variants import VARIANTS, variant_path
from idcscan.trainer.data import PatchSet, load_patches
from idcscan.trainer.export import quantize_int8, set_metadata

log = logging.getLogger(__name__)

MAX_BAC_DROP = 0.005
MIN_INT8_SPEEDUP = 1.7
CALIBRATION_TILES = 512
"""quantize_int8 calibrates on at most this many tiles, drawn evenly from the training patients."""
SPEED_TILES = 4096
SPEED_REPEATS = 7


def model_split(model: Path) -> tuple[list[str], list[str]]:
    """(training, validation) patients as the model's identity records them."""
    try:
        manifest = OnnxModel(model, provider="cpu", threads=1).manifest
    except (FileNotFoundError, ValueError):
        raise
    except Exception as exc:  # onnxruntime's load errors share no narrower base class
        raise ValueError(f"{model} is not an ONNX model onnxruntime can load") from exc
    split = manifest.identity.get("trained_on", {})
    split = split.get("split", {})
    train, val = list(split.get("train", [])), list(split.get("val", []))
    if not train or not val:
        raise ValueError(
            f"{model} records no training/validation split in its identity; "
            "variants need the patients it trained and was validated on"
        )
    return train, val


def calibration_tiles(
    patches: PatchSet, count: int = CALIBRATION_TILES, seed: int = 0
) -> np.ndarray:
    """`count` tiles drawn at random (seeded) from every training patch: all patients, both classes."""
    rng = np.random.default_rng(seed)
    index = rng.choice(len(patches), size=min(count, len(patches)), replace=False)
    return patches.tiles[np.sort(index)]


def to_fp16(source: Path, target: Path) -> None:
    """Float16 weights and arithmetic, float32 (or the model's own) input and output types."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel as GraphEditor

    original = onnx.load(str(source))
    # keep_io_types: the tile contract (input and output dtypes) is the FP32 model's. The
    # converter appends its input casts after their users: sorted again, or the checker refuses.
    editor = GraphEditor(convert_float_to_float16(original, keep_io_types=True))
    editor.topological_sort()
    converted = editor.model
    set_metadata(converted, {p.key: p.value for p in original.metadata_props})
    onnx.checker.check_model(converted)
    onnx.save(converted, str(target))


def figures(labels: np.ndarray, probability: np.ndarray, threshold: float) -> dict[str, Any]:
    confusion = Confusion.at_threshold(labels, probability, threshold)
    return {
        "balanced_accuracy": confusion.balanced_accuracy,
        "accuracy": confusion.accuracy,
        "tp": confusion.tp,
        "fp": confusion.fp,
        "tn": confusion.tn,
        "fn": confusion.fn,
    }


def tiles_per_second(
    models: dict[str, OnnxModel], tiles: np.ndarray, repeats: int = SPEED_REPEATS
) -> dict[str, float]:
    """Best tiles/s of each model on the same tiles, the models taking turns in every round, so
    that a neighbour's load on a shared machine falls on all of them alike."""
    for model in models.values():  # warm-up: the first run allocates
        model.predict(tiles[:256])
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.predict(tiles)
            seconds[name].append(time.perf_counter() - start)
    return {name: len(tiles) / min(times) for name, times in seconds.items()} | {
        f"{name}_median": len(tiles) / statistics.median(times) for name, times in seconds.items()
    }


def add_identity(path: Path, entries: dict[str, Any]) -> None:
    proto = onnx.load(str(path))
    current = {p.key: p.value for p in proto.metadata_props}
    ident = {**json.loads(current.get(IDENTITY_KEY, "{}")), **entries}
    set_metadata(proto, {IDENTITY_KEY: json.dumps(ident, sort_keys=True)})
    onnx.save(proto, str(path))


def make_variants(
    model: Path,
    data: Path,
    max_bac_drop: float = MAX_BAC_DROP,
    min_speedup: float = MIN_INT8_SPEEDUP,
    speed_tiles: int = SPEED_TILES,
    threads: int = 0,
    speed_threads: int = 1,
) -> dict[str, Any]:
    """Write the INT8 and FP16 variants of `model` beside it, with their figures; the report.

    Both are made under temporary names and take their place only once judged: a failure leaves
    the previous variants as they were, and an INT8 variant that no longer earns its place (a
    re-made model) is removed."""
    model = Path(model)
    final = {name: variant_path(model, name) for name in VARIANTS}
    partial = {name: path.with_name(f"{path.stem}.part.onnx") for name, path in final.items()}
    source = file_sha256(model)  # which FP32 file it was made from: `models register` checks
    try:
        report = judge(
            model, data, partial, max_bac_drop, min_speedup, speed_tiles, threads, speed_threads
        )
        for name, path in final.items():
            if report[name]["shipped"]:
                report[name]["onnx"] = path.name
        for name, path in final.items():  # each carries the whole report, FP32's figures too
            if report[name]["shipped"]:
                add_identity(
                    partial[name],
                    {"precision": name, "precision_figures": report, "source_sha256": source},
                )
                # readable by whoever reads the FP32 file (a worker), not only under our umask
                shutil.copymode(model, partial[name])
                partial[name].replace(path)
            else:
                path.unlink(missing_ok=True)
    finally:
        for path in partial.values():
            path.unlink(missing_ok=True)
            path.with_suffix(".prep.onnx").unlink(missing_ok=True)  # quantize_int8's
    log.info("variants of %s: %s", model, report)
    return report


def judge(
    model: Path,
    data: Path,
    paths: dict[str, Path],
    max_bac_drop: float,
    min_speedup: float,
    speed_tiles: int,
    threads: int,
    speed_threads: int,
) -> dict[str, Any]:
    """Write the variants at `paths` and measure them against `model`: the report."""
    train, val = model_split(model)
    validation = load_patches(Path(data), val)
    calibration = calibration_tiles(load_patches(Path(data), train))
    fp32 = OnnxModel(model, provider="cpu", threads=threads)
    threshold = fp32.spec.threshold
    reference = fp32.predict(validation.tiles)
    report: dict[str, Any] = {
        "model": model.name,
        "version": fp32.manifest.version,
        "threshold": threshold,
        "validation": {"patients": len(val), "tiles": len(validation)},
        "calibration": {"patients": len(train), "tiles": len(calibration)},
        "fp32": {"bytes": model.stat().st_size, **figures(validation.labels, reference, threshold)},
    }

    int8_path, fp16_path = paths["int8"], paths["fp16"]
    quantize_int8(model, int8_path, calibration, fp32.spec)
    to_fp16(model, fp16_path)
    variants = {
        "int8": OnnxModel(int8_path, provider="cpu", threads=threads),
        "fp16": OnnxModel(fp16_path, provider="cpu", threads=threads),
    }
    for name, variant in variants.items():
        probability = variant.predict(validation.tiles)
        report[name] = {
            "bytes": variant.path.stat().st_size,
            "max_abs_difference": float(np.max(np.abs(probability - reference))),
            **figures(validation.labels, probability, threshold),
        }
        report[name]["balanced_accuracy_change"] = (
            report[name]["balanced_accuracy"] - report["fp32"]["balanced_accuracy"]
        )

    timed = validation.tiles[:speed_tiles]
    for key, count in (("", speed_threads), ("_all_cores", 0)):
        speed = tiles_per_second(
            {
                "fp32": OnnxModel(model, provider="cpu", threads=count),
                "int8": OnnxModel(int8_path, provider="cpu", threads=count),
            },
            timed,
        )
        report["fp32"][f"tiles_per_s{key}"] = speed["fp32"]
        report["int8"][f"tiles_per_s{key}"] = speed["int8"]
        report["int8"][f"speedup{key}"] = speed["int8"] / speed["fp32"]
        report["int8"][f"speedup{key}_median"] = speed["int8_median"] / speed["fp32_median"]
    report["int8"]["speed_threads"] = speed_threads
    report["fp16"]["speed"] = "unmeasured: needs a GPU (onnxruntime's CPU provider emulates fp16)"

    drop = -report["int8"]["balanced_accuracy_change"]
    reasons = []
    if drop > max_bac_drop:
        reasons.append(f"balanced accuracy drops {drop:.4f} > {max_bac_drop}")
    if report["int8"]["speedup"] < min_speedup:
        reasons.append(f"speedup {report['int8']['speedup']:.2f}x < {min_speedup}x")
    report["int8"]["shipped"] = not reasons
    report["int8"]["not_shipped_because"] = "; ".join(reasons) or None
    report["fp16"]["shipped"] = True
    return report
