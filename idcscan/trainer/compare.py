"""`idcscan compare`: every architecture and balance strategy on one patient-level split.

The patches are loaded once; each (architecture, balance) trains in `OUT/<arch>-<balance>/` with
the same split, seed and budget. The best model is chosen on *validation* by its AUROC
(threshold-free; ties broken by validation balanced accuracy at its chosen threshold), exported
to `OUT/best.onnx`, and reported with every model's validation and test figures in
`comparison.md` / `comparison.json`, a confusion matrix per model (test patients, at the
validation threshold) and ROC/PR curves on validation and on test.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from idcscan.trainer import train
from idcscan.trainer.data import load_patches
from idcscan.trainer.export import export_run
from idcscan.trainer.options import add_compare_arguments
from idcscan.trainer.report import markdown_table, model_card, plot_confusion, plot_curves

log = logging.getLogger(__name__)

CRITERION = "validation AUROC (ties: validation balanced accuracy)"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Compare IDC classifiers", add_help=add_help)
    add_compare_arguments(parser)
    return parser


def _selection_key(row: dict[str, Any]) -> tuple[float, float]:
    val = row["val"]
    return (val["auroc"] or 0.0, val["balanced_accuracy"])


def main(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = train.resolve_split(args)
    patches = load_patches(Path(args.data), split.train + split.val + split.test)
    rows, val_curves, test_curves = [], {}, {}
    for arch in args.archs:
        for strategy in args.balance:
            name = f"{arch}-{strategy}"
            run = out / name
            if args.resume and (run / "metrics.json").is_file():
                log.info("%s already trained; reusing %s", name, run)
                metrics = json.loads((run / "metrics.json").read_text())
            else:
                run_args = argparse.Namespace(
                    **{
                        **train.plain_arguments(args),
                        "arch": arch,
                        "balance": strategy,
                        "out": str(run),
                    }
                )
                metrics = train.main(run_args, patches)
            predictions = np.load(run / "predictions.npz")
            val_curves[name] = (predictions["val_labels"], predictions["val_probabilities"])
            test_curves[name] = (predictions["test_labels"], predictions["test_probabilities"])
            test = metrics["test"]["overall"]
            plot_confusion(
                test,
                out / f"confusion-{name}.png",
                f"{name}, test patients, threshold {metrics['threshold']:.3f}",
            )
            rows.append(
                {
                    "name": name,
                    "arch": arch,
                    "balance": strategy,
                    "run": str(run),
                    "threshold": metrics["threshold"],
                    "best_epoch": metrics["best_epoch"],
                    "epochs_run": metrics["epochs_run"],
                    "train_patches_per_s": float(
                        np.mean([h["patches_per_s"] for h in metrics["history"]])
                    ),
                    "val": metrics["val"]["overall"],
                    "test": test,
                    "test_per_patient": metrics["test"]["per_patient"],
                }
            )
    plot_curves(val_curves, out / "curves-val.png", "validation patients")
    plot_curves(test_curves, out / "curves-test.png", "test patients")

    best = max(rows, key=_selection_key)
    val_set = patches.of_patients(split.val)
    export = export_run(
        Path(best["run"]), out / "best.onnx", val_set.tiles, val_set.labels, int8=args.int8
    )
    report = {
        "criterion": CRITERION,
        "best": best["name"],
        "split": split.as_dict(),
        "export": export,
        "models": rows,
        "settings": train.plain_arguments(args),
    }
    (out / "comparison.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "comparison.md").write_text(
        "# Model comparison\n\n"
        + markdown_table(rows, best["name"], CRITERION)
        + "\nFigures on the test patients use the threshold chosen on validation "
        f"(rule: {args.threshold_rule}). Confusion matrices: `confusion-<model>.png`; "
        "curves: `curves-val.png`, `curves-test.png`.\n"
    )
    best_metrics = json.loads((Path(best["run"]) / "metrics.json").read_text())
    (out / "MODEL_CARD.md").write_text(model_card(report, best_metrics))
    log.info("best on validation: %s, exported to %s", best["name"], export["onnx"])
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(get_args_parser().parse_args())
