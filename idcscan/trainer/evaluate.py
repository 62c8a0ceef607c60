"""Figures per split and per patient, the validation-chosen threshold, and ONNX evaluation.

Torch-free: `idcscan evaluate` scores any ONNX model on any folder in the dataset's layout through
`OnnxModel.predict`, i.e. `to_model_input` and onnxruntime, exactly as the worker does.

The decision threshold is chosen on the validation patients, never on test. Rules:
- `sensitivity` (default): a missed cancer costs more than a false alarm, so the highest
  threshold whose validation sensitivity is at least `--min-sensitivity` (0.90 by default): the
  best specificity that still finds 90% of IDC.
- `balanced-accuracy`: the threshold that maximises balanced accuracy on validation (Youden's J);
  of equal maxima, the highest threshold.

Validation figures (the epoch kept, the calibration, the threshold) weigh tiles by
`--validation-weights`: `patch` counts every tile once, so a fold's few complete slides (about a
thousand tiles each) decide; `patient` gives every validation patient the same weight.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from idcscan.core.metrics import binary_report, patient_weights, roc_curve

if TYPE_CHECKING:
    from idcscan.trainer.data import PatchSet

THRESHOLD_RULES = ("sensitivity", "balanced-accuracy")
VALIDATION_WEIGHTS = ("patch", "patient")


def validation_weights(patients: np.ndarray, how: str) -> np.ndarray | None:
    """Per-tile weights of the validation figures (see the module's docstring); None: all 1."""
    if how not in VALIDATION_WEIGHTS:
        raise ValueError(f"unknown validation weights {how!r}; choose from {VALIDATION_WEIGHTS}")
    return patient_weights(patients) if how == "patient" else None


def choose_threshold(
    labels: np.ndarray,
    probabilities: np.ndarray,
    rule: str = "sensitivity",
    min_sensitivity: float = 0.90,
    weights: np.ndarray | None = None,
) -> float:
    """The decision threshold on validation scores by `rule` (see the module's docstring), each
    tile counting `weights` (1 each when None)."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("choosing a threshold needs validation patches of both classes")
    fpr, tpr, thresholds = roc_curve(labels, probabilities, weights)
    # Drop the (0, 0) point at threshold +inf: it predicts nothing positive.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if rule == "balanced-accuracy":
        best = int(np.argmax(tpr - fpr))  # argmax returns the first, i.e. highest, threshold
    elif rule == "sensitivity":
        if not 0.0 < min_sensitivity <= 1.0:
            raise ValueError(f"min_sensitivity must lie in (0, 1], got {min_sensitivity}")
        best = int(np.flatnonzero(tpr >= min_sensitivity)[0])
    else:
        raise ValueError(f"unknown threshold rule {rule!r}; choose from {THRESHOLD_RULES}")
    return float(np.clip(thresholds[best], 0.0, 1.0))


def split_report(
    labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Every figure over the whole split and for each of its patients."""
    per_patient = {
        str(p): binary_report(labels[patients == p], probabilities[patients == p], threshold)
        for p in sorted(set(patients.tolist()))
    }
    return {"overall": binary_report(labels, probabilities, threshold), "per_patient": per_patient}


SUMMARY_KEYS = (
    "fn",
    "recall",
    "specificity",
    "balanced_accuracy",
    "f1",
    "precision",
    "auroc",
    "pr_auc",
    "threshold",
)


def fold_summary(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures of several folds: each fold's, mean and sd (over folds) of every figure, and the
    confusion counts summed over folds."""
    summary: dict[str, Any] = {"per_fold": per_fold}
    for key in SUMMARY_KEYS:
        values = np.array(
            [f[key] for f in per_fold if f[key] is not None and not np.isnan(f[key])],
            dtype=np.float64,
        )
        summary[key] = {
            "mean": float(values.mean()) if len(values) else None,
            "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        }
    summary["pooled"] = {k: int(sum(f[k] for f in per_fold)) for k in ("tp", "fp", "tn", "fn")}
    return summary


def json_safe(value: Any) -> Any:
    """NaN (e.g. AUROC of a patient with one class) becomes null, so the JSON stays standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def evaluate_onnx(
    model_path: Path,
    data: Path,
    threshold: float | None = None,
    batch_size: int = 256,
    provider: str = "auto",
) -> dict[str, Any]:
    """An ONNX model's figures on every patient folder under `data`, at its own threshold."""
    from idcscan.core.onnxmodel import OnnxModel
    from idcscan.trainer.data import find_patients, load_patches

    model = OnnxModel(model_path, provider=provider)
    spec = model.spec
    labels, probabilities, patients, padded = [], [], [], 0
    for patient in find_patients(Path(data)):  # one patient at a time: memory stays small
        patches = load_patches(Path(data), [patient], size=spec.tile_size)
        labels.append(patches.labels)
        probabilities.append(model.predict(patches.tiles, batch_size=batch_size))
        patients.append(patches.patients)
        padded += patches.padded
    cut = spec.threshold if threshold is None else float(threshold)
    return {
        "model": str(model_path),
        "model_version": model.manifest.version,
        "architecture": model.manifest.architecture,
        "data": str(data),
        "padded_patches": padded,
        **split_report(
            np.concatenate(labels), np.concatenate(probabilities), np.concatenate(patients), cut
        ),
    }


def evaluate_patches(
    model_path: Path, patches: PatchSet, batch_size: int = 256, provider: str = "auto"
) -> dict[str, Any]:
    """An ONNX model's figures on patches already in memory, at its own threshold."""
    from idcscan.core.onnxmodel import OnnxModel

    model = OnnxModel(model_path, provider=provider)
    probabilities = model.predict(patches.tiles, batch_size=batch_size)
    return {
        "model_version": model.manifest.version,
        "patients": patches.patient_ids,
        **split_report(patches.labels, probabilities, patches.patients, model.spec.threshold),
    }
