"""What the sensitivity rule keeps on patients it never saw: `idcscan threshold-floors`.

The rule picks the highest threshold whose *validation* sensitivity reaches a floor (0.90 by
default). On the held-out patients of the same fold the sensitivity comes out lower or higher:
validation folds are a few dozen patients. This study refits the rule on every fold's saved
validation margins (`predictions.npz` of each `fold-*` run) for several floors and both
validation weightings, and reports what each gives on the fold's held-out patients: the
sensitivity the held-out patients really got (mean and worst fold), specificity, balanced
accuracy, F1 and the IDC tiles missed. Choosing a floor this way uses held-out folds as a
second validation level (cross-validation of one setting); the published test patients are not
in any fold and are not read. Torch-free: it reads saved predictions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from idcscan.core.metrics import binary_report
from idcscan.trainer.calibration import sigmoid
from idcscan.trainer.evaluate import VALIDATION_WEIGHTS, choose_threshold, validation_weights


def fold_predictions(config: Path) -> list[dict[str, np.ndarray]]:
    """The saved predictions of every finished fold of one configuration, in fold order."""
    folds = sorted(
        (f for f in Path(config).glob("fold-*") if (f / "predictions.npz").is_file()),
        key=lambda f: int(f.name.split("-")[1]),
    )
    if not folds:
        raise ValueError(f"{config}: no fold-*/predictions.npz (a configuration of `compare`)")
    return [dict(np.load(f / "predictions.npz")) for f in folds]


def study(
    folds: list[dict[str, np.ndarray]],
    floors: Sequence[float],
    weightings: Sequence[str] = VALIDATION_WEIGHTS,
) -> list[dict[str, Any]]:
    """One row per (weighting, floor): held-out figures over the folds."""
    rows = []
    for how in weightings:
        for floor in floors:
            reports = []
            for fold in folds:
                # The rule only ranks tiles, so the uncalibrated probability serves: calibration
                # is monotone and moves no tile across the cut it picks.
                threshold = choose_threshold(
                    fold["val_labels"],
                    sigmoid(fold["val_margins"]),
                    "sensitivity",
                    floor,
                    validation_weights(fold["val_patients"], how),
                )
                reports.append(
                    binary_report(fold["test_labels"], sigmoid(fold["test_margins"]), threshold)
                )
            sensitivity = [r["recall"] for r in reports]
            rows.append(
                {
                    "validation_weights": how,
                    "min_sensitivity": floor,
                    "folds": len(reports),
                    "missed_idc": int(sum(r["fn"] for r in reports)),
                    "idc_tiles": int(sum(r["fn"] + r["tp"] for r in reports)),
                    "sensitivity": float(np.mean(sensitivity)),
                    "worst_fold_sensitivity": float(min(sensitivity)),
                    **{
                        key: float(np.mean([r[key] for r in reports]))
                        for key in ("specificity", "balanced_accuracy", "f1")
                    },
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| validation weights | floor | missed IDC (fn) | held-out sensitivity (worst fold) "
        "| specificity | balanced accuracy | F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['validation_weights']} | {r['min_sensitivity']:.2f} "
            f"| {r['missed_idc']:,} of {r['idc_tiles']:,} "
            f"| {r['sensitivity']:.3f} ({r['worst_fold_sensitivity']:.3f}) "
            f"| {r['specificity']:.3f} | {r['balanced_accuracy']:.3f} | {r['f1']:.3f} |"
        )
    return "\n".join(lines)
