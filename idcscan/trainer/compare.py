"""`idcscan compare`: architectures x balance strategies x augmentations, by patient-level CV.

The patches are loaded once. Each configuration `<arch>-<balance>-<augment>` trains once per fold
in `OUT/<configuration>/fold-<i>/` (`--resume` reuses finished folds, so a long comparison runs in
pieces). With `--split cv` every figure is reported per fold (on the fold's held-out patients, at
the threshold chosen on its validation fold) and as mean +- sd over folds; confusion matrices sum
the held-out folds, and the ROC/PR curves pool them.

The best configuration is the one with the highest mean held-out AUROC (threshold-free; ties by
mean balanced accuracy). Of its fold models, the one with the best validation AUROC is the base of
the inference variants (`idcscan.trainer.variants`: test-time augmentation, cross-validated, and
the fold ensemble), each calibrated and thresholded on validation; the chosen variant is copied to
`OUT/best.onnx`. Only then are the published test patients, which no fold contains, scored, once,
through the worker's own inference path; `OUT/best.metrics.json` records the same figures through
torch. With `--split canonical` or `seeded` there is one "fold", whose test split plays both parts.

`--jobs N` trains N folds at once, each in its own process (a GPU host, where one small network
leaves the card mostly idle; or a CPU host with cores to spare). `--no-export` stops after the
comparison: no variants, nothing shipped, the published test patients left unscored.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from idcscan.core.tiles import TileSpec
from idcscan.trainer import train
from idcscan.trainer.data import load_patches
from idcscan.trainer.evaluate import (
    choose_threshold,
    evaluate_patches,
    fold_summary,
    json_safe,
    split_report,
    validation_weights,
)
from idcscan.trainer.export import export_run, split_identity, torch_probabilities, update_identity
from idcscan.trainer.options import add_compare_arguments
from idcscan.trainer.report import (
    comparison_markdown,
    model_card,
    plot_confusion,
    plot_curves,
)

log = logging.getLogger(__name__)

CRITERION = "mean held-out AUROC over folds (ties: mean balanced accuracy)"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Compare IDC classifiers", add_help=add_help)
    add_compare_arguments(parser)
    return parser


def configurations(args: argparse.Namespace) -> list[dict[str, str]]:
    return [
        {"arch": a, "balance": b, "augment": g, "name": f"{a}-{b}-{g}"}
        for a, b, g in itertools.product(args.archs, args.balance, args.augment)
    ]


def summarize_folds(fold_metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Held-out figures per fold, their mean and sd, the confusion summed over folds, and what
    each fold fitted on its validation patients."""
    return {
        **fold_summary([m["test"]["overall"] for m in fold_metrics]),
        "temperature": [m.get("temperature") for m in fold_metrics],
        "calibration": [m.get("calibration") for m in fold_metrics],
        "best_val_auroc": [
            max((h["val_auroc"] for h in m["history"]), default=None) for m in fold_metrics
        ],
    }


def _selection_key(row: dict[str, Any]) -> tuple[float, float]:
    cv = row["cv"]
    return (cv["auroc"]["mean"] or 0.0, cv["balanced_accuracy"]["mean"] or 0.0)


def fold_arguments(
    args: argparse.Namespace, config: dict[str, str], fold: int, out: Path
) -> argparse.Namespace:
    """The `idcscan train` options of one configuration's fold."""
    return argparse.Namespace(
        **{
            **train.plain_arguments(args),
            "arch": config["arch"],
            "balance": config["balance"],
            "augment": config["augment"],
            "fold": fold,
            "out": str(out / config["name"] / f"fold-{fold}"),
        }
    )


def train_folds(
    args: argparse.Namespace, config: dict[str, str], folds: int, out: Path, patches: Any
) -> list[dict[str, Any]]:
    """Train (or, with --resume, reuse) every fold of one configuration; their metrics."""
    fold_metrics = []
    for fold in range(folds):
        run = out / config["name"] / f"fold-{fold}"
        if args.resume and (run / "metrics.json").is_file():
            log.info("%s fold %d already trained; reusing %s", config["name"], fold, run)
            fold_metrics.append(json.loads((run / "metrics.json").read_text()))
            continue
        fold_metrics.append(train.main(fold_arguments(args, config, fold, out), patches))
    return fold_metrics


# Larger networks first, so that the slowest folds do not start last.
_COST_ORDER = {"densenet121": 0, "resnet18": 1, "alexnet": 2}
_worker_patches: Any = None


def _load_worker_patches(data: str, patients: list[str]) -> None:
    global _worker_patches
    logging.basicConfig(level=logging.INFO, format="%(processName)s %(message)s")
    _worker_patches = load_patches(Path(data), patients)


def _train_in_worker(run_args: dict[str, Any]) -> str:
    train.main(argparse.Namespace(**run_args), _worker_patches)
    return str(run_args["out"])


def train_in_parallel(
    args: argparse.Namespace,
    configs: list[dict[str, str]],
    folds: int,
    out: Path,
    patients: list[str],
) -> None:
    """Train every fold not yet finished in `args.jobs` processes, each loading the patches once.

    Folds go out fold by fold (every configuration's fold 0 first), so that an interrupted
    comparison has the same folds for every configuration; `--resume` finishes it.
    """
    # Each process gets its share of the cores unless --threads says otherwise.
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    per_process = argparse.Namespace(**{**vars(args), "threads": threads})
    pending = [
        fold_arguments(per_process, config, fold, out)
        for fold in range(folds)
        for config in sorted(configs, key=lambda c: _COST_ORDER.get(c["arch"], 9))
        if not (args.resume and (out / config["name"] / f"fold-{fold}" / "metrics.json").is_file())
    ]
    if not pending:
        return
    log.info("training %d folds in %d processes", len(pending), args.jobs)
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(
        args.jobs, context, initializer=_load_worker_patches, initargs=(args.data, patients)
    ) as pool:
        futures = [pool.submit(_train_in_worker, train.plain_arguments(a)) for a in pending]
        for future in as_completed(futures):
            log.info("trained %s", future.result())  # the first failure stops the comparison


def main(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folds = args.folds if args.split == "cv" else 1
    splits = [train.resolve_split(args, fold)[0] for fold in range(folds)]
    final_test = train.resolve_split(args, 0)[1]
    patients = sorted({p for s in splits for p in (*s.train, *s.val, *s.test)} | set(final_test))
    if args.jobs > 1:
        train_in_parallel(args, configurations(args), folds, out, patients)
        args = argparse.Namespace(**{**vars(args), "resume": True})  # reuse what they trained
    patches = load_patches(Path(args.data), patients)

    rows: list[dict[str, Any]] = []
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for config in configurations(args):
        fold_metrics = train_folds(args, config, folds, out, patches)
        cv = summarize_folds(fold_metrics)
        held_out = [
            np.load(out / config["name"] / f"fold-{f}" / "predictions.npz") for f in range(folds)
        ]
        curves[config["name"]] = (
            np.concatenate([p["test_labels"] for p in held_out]),
            np.concatenate([p["test_probabilities"] for p in held_out]),
        )
        plot_confusion(
            cv["pooled"],
            out / f"confusion-{config['name']}.png",
            f"{config['name']}, held-out patients of {folds} fold(s), each at its validation threshold",
        )
        rows.append({**config, "cv": cv, "folds": fold_metrics})
    plot_curves(curves, out / "curves-held-out.png", f"held-out patients, {folds} fold(s) pooled")

    best = max(rows, key=_selection_key)
    best_fold = int(
        np.nanargmax([a if a is not None else np.nan for a in best["cv"]["best_val_auroc"]])
    )
    runs = [out / best["name"] / f"fold-{f}" for f in range(folds)]
    shipped: str | None = None
    variants: dict[str, Any] = {}
    final: dict[str, Any] = {}
    if not args.no_export:
        shipped, variants, graph = finalize(args, best, best_fold, runs, splits, patches, out)
        if final_test:
            final = score_final_test(
                out, patches.of_patients(final_test), shipped, variants, graph, runs[best_fold]
            )

    report = json_safe(
        {
            "criterion": CRITERION,
            "best": best["name"],
            "best_fold": best_fold,
            "folds": folds,
            "splits": [s.as_dict() for s in splits],
            "shipped": shipped,
            "variants": variants,
            "final_test_patients": list(final_test),
            "final_test": final,
            "models": [{k: v for k, v in r.items() if k != "folds"} for r in rows],
            # Where the dataset and the runs lie is this machine's business: the report, which may
            # be committed, names them by what they are.
            "settings": {
                **train.plain_arguments(args),
                "data": "<IDC dataset>",
                "out": Path(args.out).name,
            },
        }
    )
    (out / "comparison.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "comparison.md").write_text(comparison_markdown(report))
    if shipped is None:
        log.info("best by cross-validation: %s; nothing exported (--no-export)", best["name"])
        return report
    best_metrics = json.loads((runs[best_fold] / "metrics.json").read_text())
    (out / "MODEL_CARD.md").write_text(model_card(report, best_metrics))
    log.info(
        "shipped: %s of %s fold %d, in %s", shipped, best["name"], best_fold, out / "best.onnx"
    )
    return report


def score_final_test(
    out: Path, test_set: Any, shipped: str, variants: dict[str, Any], graph: Any, best_run: Path
) -> dict[str, Any]:
    """The published test patients, scored once, after every choice was made, through the worker's
    inference path (the shipped variant and, for information, the ensemble)."""
    final: dict[str, Any] = {}
    for name in dict.fromkeys([shipped, *(v for v in variants if v.startswith("ensemble"))]):
        final[name] = evaluate_patches(Path(variants[name]["onnx"]), test_set)
    update_identity(
        out / "best.onnx",
        {
            "test_metrics": final[shipped]["overall"],
            "confusion": {k: final[shipped]["overall"][k] for k in ("tp", "fp", "tn", "fn")},
            "test_patients": test_set.patient_ids,
        },
    )
    # The same patients through torch: what the shipped file must reproduce (a test checks
    # it on the bundled sample patients), independent of onnxruntime.
    threshold = variants[shipped]["threshold"]
    torch_figures = split_report(
        test_set.labels,
        torch_probabilities(graph, test_set.tiles, TileSpec()),
        test_set.patients,
        threshold,
    )
    best_metrics = json.loads((best_run / "metrics.json").read_text())
    (out / "best.metrics.json").write_text(
        json.dumps(
            json_safe(
                {
                    **{k: best_metrics[k] for k in ("arch", "width", "balance", "augment")},
                    "variant": shipped,
                    "threshold": threshold,
                    "threshold_rule": best_metrics["threshold_rule"],
                    "split": split_identity(best_metrics["split"]),
                    "test": torch_figures,
                }
            ),
            indent=2,
        )
    )
    plot_confusion(
        final[shipped]["overall"],
        out / "confusion-final-test.png",
        f"shipped model ({shipped}), published test patients",
    )
    return final


def finalize(
    args: argparse.Namespace,
    best: dict[str, Any],
    best_fold: int,
    runs: list[Path],
    splits: list[Any],
    patches: Any,
    out: Path,
) -> tuple[str, dict[str, Any], Any]:
    """The inference variants of the best configuration (TTA by cross-validation, the fold
    ensemble), exported and timed; the chosen one copied to `OUT/best.onnx`."""
    from idcscan.core.stain import MIN_PATIENTS
    from idcscan.trainer.export import load_run
    from idcscan.trainer.stain import reference_of, write_reference
    from idcscan.trainer.variants import choose_variant, export_variants, tta_cross_validation

    val_set = patches.of_patients(splits[best_fold].val)
    # The stain reference: every patient the comparison trained, validated or held out a fold
    # on (not the set-aside test patients).
    seen = sorted({p for s in splits for p in (*s.train, *s.val, *s.test)})
    stain = reference_of(patches.of_patients(seen)) if len(seen) >= MIN_PATIENTS else None
    if len(runs) == 1:  # one split: no folds to ensemble, no folds to cross-validate TTA on
        summary = export_run(
            runs[0], out / "best.onnx", val_set.tiles, val_set.labels, args.int8, stain
        )
        return "tta-1", {"tta-1": summary}, load_run(runs[0])[0]
    tta = tta_cross_validation(
        runs, splits, patches, args.threshold_rule, args.min_sensitivity, args.validation_weights
    )
    # The ensemble's threshold: the rule applied to the members' pooled held-out probabilities
    # (each member's honest output on patients it never saw), as no patient is unseen by all.
    pooled = [np.load(run / "predictions.npz") for run in runs]
    ensemble_threshold = choose_threshold(
        np.concatenate([p["test_labels"] for p in pooled]),
        np.concatenate([p["test_probabilities"] for p in pooled]),
        args.threshold_rule,
        args.min_sensitivity,
        validation_weights(
            np.concatenate([p["test_patients"] for p in pooled]), args.validation_weights
        ),
    )
    variants, graphs = export_variants(
        runs, best_fold, tta, ensemble_threshold, out / "variants", val_set
    )
    for views, summary in tta.items():
        variants[f"tta-{views}"]["cv"] = summary
    shipped = choose_variant(tta, variants)
    shutil.copyfile(variants[shipped]["onnx"], out / "best.onnx")
    if stain is not None:
        write_reference(out / "best.onnx", stain)
    if args.int8:
        variants["int8"] = export_run(
            runs[best_fold], out / "single.onnx", val_set.tiles, val_set.labels, int8=True
        )["int8"]
    return shipped, variants, graphs[shipped]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(get_args_parser().parse_args())
