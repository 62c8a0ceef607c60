"""Inference-time variants of a cross-validated configuration, each one ONNX graph: test-time
augmentation (TTA) over the dihedral group and the ensemble of the fold models; their gain by
cross-validation and their cost in tiles/s.

TTA is cross-validated honestly: in every fold the fold's model scores its validation and held-out
patients under 1, 2, 4 and 8 views; calibration and threshold are refitted on validation for each
view count, and the held-out figures are reported per fold and as mean +- sd. The ensemble of the
fold models cannot be: every local patient was trained on by some member. Its threshold comes
from the members' pooled held-out probabilities, and it is shown on the published test patients
for information only; it never decides what ships.

What ships is the variant with the best mean held-out AUROC (ties: balanced accuracy) among those
that score at least half as many tiles per second as the single model (`MAX_SLOWDOWN`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from idcscan.core.onnxmodel import OnnxModel
from idcscan.core.tiles import TileSpec, to_model_input
from idcscan.trainer.calibration import expected_calibration_error, fit_platt, sigmoid
from idcscan.trainer.data import PatchSet
from idcscan.trainer.evaluate import (
    choose_threshold,
    fold_summary,
    split_report,
    validation_weights,
)
from idcscan.trainer.export import export_graph, identity, load_run, model_version, run_spec
from idcscan.trainer.models import (
    TTA_ORDER,
    TTA_VIEWS,
    ProbabilityHead,
    ScoringGraph,
    dihedral_view,
)

log = logging.getLogger(__name__)

MAX_SLOWDOWN = 2.0
PARITY_PATCHES = 1024
THROUGHPUT_PATCHES = 4096


@torch.inference_mode()
def view_margins(network: torch.nn.Module, tiles: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Raw logit margins (8, N) of every tile under each of the 8 dihedral views, in TTA order."""
    spec = TileSpec()
    out = np.empty((len(TTA_ORDER), len(tiles)), dtype=np.float32)
    for start in range(0, len(tiles), batch_size):
        x = torch.from_numpy(to_model_input(tiles[start : start + batch_size], spec))
        for row, k in enumerate(TTA_ORDER):
            logits = network(dihedral_view(x, k)).float()
            out[row, start : start + len(x)] = (logits[:, 1] - logits[:, 0]).numpy()
    return out


def _fold_view_margins(
    run: Path, val: PatchSet, held_out: PatchSet
) -> tuple[np.ndarray, np.ndarray]:
    cache = run / "tta-margins.npz"
    # Valid only for the weights it was computed from: a run trained again writes a newer best.pt.
    if cache.is_file() and cache.stat().st_mtime >= (run / "best.pt").stat().st_mtime:
        saved = np.load(cache)
        return saved["val"], saved["held_out"]
    head, _ = load_run(run)
    network = head.network
    val_margins, held_margins = (
        view_margins(network, val.tiles),
        view_margins(network, held_out.tiles),
    )
    np.savez_compressed(cache, val=val_margins, held_out=held_margins)
    return val_margins, held_margins


def tta_cross_validation(
    runs: list[Path],
    splits: list[Any],
    patches: PatchSet,
    threshold_rule: str,
    min_sensitivity: float,
    weights: str = "patch",
) -> dict[int, dict[str, Any]]:
    """For each view count, per fold: calibration and threshold fitted on validation, figures and
    calibration error on the held-out patients; and their summary over folds."""
    per_views: dict[int, list[dict[str, Any]]] = {v: [] for v in TTA_VIEWS}
    fitted: dict[int, list[tuple[float, float, float]]] = {v: [] for v in TTA_VIEWS}
    calibration: dict[int, list[dict[str, float]]] = {v: [] for v in TTA_VIEWS}
    for run, split in zip(runs, splits, strict=True):
        val, held_out = patches.of_patients(split.val), patches.of_patients(split.test)
        val_margins, held_margins = _fold_view_margins(run, val, held_out)
        val_weights = validation_weights(val.patients, weights)
        for views in TTA_VIEWS:
            val_mean = val_margins[:views].mean(axis=0)
            temperature, bias = fit_platt(val.labels, val_mean, val_weights)
            threshold = choose_threshold(
                val.labels,
                sigmoid(val_mean / temperature + bias),
                threshold_rule,
                min_sensitivity,
                val_weights,
            )
            held_mean = held_margins[:views].mean(axis=0)
            held_probabilities = sigmoid(held_mean / temperature + bias)
            report = split_report(held_out.labels, held_probabilities, held_out.patients, threshold)
            per_views[views].append(report["overall"])
            fitted[views].append((temperature, bias, threshold))
            calibration[views].append(
                {
                    "temperature": temperature,
                    "bias": bias,
                    "val_before": expected_calibration_error(val.labels, sigmoid(val_mean)),
                    "val_after": expected_calibration_error(
                        val.labels, sigmoid(val_mean / temperature + bias)
                    ),
                    "held_out_before": expected_calibration_error(
                        held_out.labels, sigmoid(held_mean)
                    ),
                    "held_out_after": expected_calibration_error(
                        held_out.labels, held_probabilities
                    ),
                }
            )
    return {
        views: {
            **fold_summary(per_views[views]),
            "fitted": fitted[views],
            "calibration": calibration[views],
        }
        for views in TTA_VIEWS
    }


def tiles_per_second(path: Path, tiles: np.ndarray, repeats: int = 3) -> float:
    """Best of `repeats` passes of onnxruntime over `tiles` through `OnnxModel.predict`, the
    worker's own call (preprocessing included)."""
    model = OnnxModel(path, provider="cpu")
    model.predict(tiles[:256])  # warm-up: the first run allocates
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(tiles)
        best = min(best, time.perf_counter() - started)
    return len(tiles) / best


def export_variants(
    runs: list[Path],
    best_fold: int,
    tta: dict[int, dict[str, Any]],
    ensemble_threshold: float,
    out: Path,
    parity: PatchSet,
) -> tuple[dict[str, dict[str, Any]], dict[str, ScoringGraph]]:
    """Every variant as ONNX under `out`: `tta-<views>` of the best fold's model (views 1 is the
    plain model) and `ensemble-<K>` of all fold models; their summaries, and the torch graphs."""
    out.mkdir(parents=True, exist_ok=True)
    tiles = parity.tiles[:PARITY_PATCHES]
    exported: dict[str, dict[str, Any]] = {}
    graphs: dict[str, ScoringGraph] = {}
    head, metrics = load_run(runs[best_fold])
    base_version = model_version(head, metrics)
    for views in TTA_VIEWS:
        temperature, bias, threshold = tta[views]["fitted"][best_fold]
        graph = ScoringGraph([ProbabilityHead(head.network, temperature, bias)], views).eval()
        version = f"{base_version}-tta{views}"
        ident = {
            **identity(version, metrics),
            "variant": {"members": 1, "views": views, "fold": best_fold},
            "temperature": temperature,
            "calibration_bias": bias,
        }
        summary = export_graph(
            graph, out / f"tta-{views}.onnx", run_spec(metrics, version, threshold), ident, tiles
        )
        exported[f"tta-{views}"] = {**summary, "views": views, "members": 1}
        graphs[f"tta-{views}"] = graph
    members = [load_run(run)[0] for run in runs]
    graph = ScoringGraph(members, views=1).eval()
    version = f"{base_version}-ensemble{len(members)}"
    ident = {
        **identity(version, metrics),
        "variant": {"members": len(members), "views": 1, "folds": list(range(len(members)))},
    }
    name = f"ensemble-{len(members)}"
    summary = export_graph(
        graph, out / f"{name}.onnx", run_spec(metrics, version, ensemble_threshold), ident, tiles
    )
    exported[name] = {**summary, "views": 1, "members": len(members)}
    graphs[name] = graph
    speed_tiles = np.resize(parity.tiles, (THROUGHPUT_PATCHES, *parity.tiles.shape[1:]))
    for entry in exported.values():
        entry["tiles_per_s"] = tiles_per_second(Path(entry["onnx"]), speed_tiles)
    single = exported["tta-1"]["tiles_per_s"]
    for entry in exported.values():
        entry["slowdown"] = single / entry["tiles_per_s"]
    (out / "variants.json").write_text(json.dumps(exported, indent=2))
    return exported, graphs


def choose_variant(tta: dict[int, dict[str, Any]], exported: dict[str, dict[str, Any]]) -> str:
    """The cross-validated variant with the best mean AUROC (ties: BAC) within `MAX_SLOWDOWN`."""
    allowed = [v for v in TTA_VIEWS if exported[f"tta-{v}"]["slowdown"] <= MAX_SLOWDOWN]
    best = max(
        allowed,
        key=lambda v: (tta[v]["auroc"]["mean"] or 0.0, tta[v]["balanced_accuracy"]["mean"] or 0.0),
    )
    return f"tta-{best}"
