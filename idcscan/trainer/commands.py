"""Subcommands of the trainer: `train`, `compare`, `export`, `threshold-floors`, `evaluate`,
`models`.

Light at import: torch, onnx and onnxruntime are imported inside the handlers, and `evaluate` and
`models register` never import torch at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from idcscan.trainer.options import add_compare_arguments, add_train_arguments


def register(subparsers: Any) -> None:
    train = subparsers.add_parser("train", help="train one model on a patient-level split")
    add_train_arguments(train)
    train.set_defaults(func=_train)

    compare = subparsers.add_parser(
        "compare", help="train every architecture on one split, report, export the best"
    )
    add_compare_arguments(compare)
    compare.set_defaults(func=_compare)

    export = subparsers.add_parser("export", help="export a training run to ONNX")
    export.add_argument("run", help="run folder of `idcscan train`")
    export.add_argument("--out", required=True, help="ONNX file to write")
    export.add_argument(
        "--data",
        default=None,
        help="patches for the parity check (default: the run's validation patients)",
    )
    export.add_argument(
        "--int8",
        action="store_true",
        help="also write <name>-int8.onnx and measure its accuracy change",
    )
    export.set_defaults(func=_export)

    floors = subparsers.add_parser(
        "threshold-floors",
        help="what the sensitivity rule's floor gives on held-out patients, fold by fold",
    )
    floors.add_argument(
        "config", type=Path, help="one configuration's folder of a comparison (its fold-* runs)"
    )
    floors.add_argument(
        "--floors",
        type=float,
        nargs="+",
        default=[0.90, 0.92, 0.94, 0.95],
        help="validation sensitivity floors to try",
    )
    floors.add_argument("--json", action="store_true", help="print JSON")
    floors.set_defaults(func=_threshold_floors)

    evaluate = subparsers.add_parser("evaluate", help="figures of an ONNX model on a patch folder")
    evaluate.add_argument("--model", required=True, help="ONNX model file")
    evaluate.add_argument(
        "--data", required=True, help="folder in the layout <patient>/<0|1>/*.png"
    )
    evaluate.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold (default: the model's own)",
    )
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(func=_evaluate)

    models = subparsers.add_parser("models", help="the model registry")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    reg = models_sub.add_parser("register", help="record an exported model in the database")
    reg.add_argument(
        "model",
        nargs="?",
        default=None,
        help="ONNX model file exported by idcscan (default: IDCSCAN_MODEL_PATH, else the "
        "reference model shipped with idcscan)",
    )
    reg.add_argument("--activate", action="store_true", help="make it the active model")
    reg.set_defaults(func=_models_register)
    stain = models_sub.add_parser(
        "stain-reference",
        help="compute the training data's stain reference from a dataset folder and write it "
        "into an exported model's metadata (no retraining)",
    )
    stain.add_argument("model", type=Path, help="ONNX model file exported by idcscan, rewritten")
    stain.add_argument(
        "--data", type=Path, required=True, help="folder in the layout <patient>/<0|1>/*.png"
    )
    stain.add_argument(
        "--patients",
        nargs="+",
        default=None,
        help="the patients the model trained on (default: every patient of the folder)",
    )
    stain.set_defaults(func=_models_stain_reference)
    uint8 = models_sub.add_parser(
        "uint8-input",
        help="rewrite an exported float32-input model to take uint8 tiles, its normalisation "
        "inside the graph (no retraining; checked against the original before it is written)",
    )
    uint8.add_argument("model", type=Path, help="ONNX model file exported by idcscan")
    uint8.add_argument("--out", type=Path, help="where to write it (default: over MODEL)")
    uint8.add_argument(
        "--data",
        type=Path,
        help="patches (<patient>/<0|1>/*.png) to check parity on (default: random tiles)",
    )
    uint8.set_defaults(func=_models_uint8_input)
    variants = models_sub.add_parser(
        "variants",
        help="write the INT8 (CPU) and FP16 (GPU) variants of a model beside it, with their "
        "validation figures; INT8 only where it keeps the accuracy and earns its speed",
    )
    variants.add_argument("model", type=Path, help="ONNX model file exported by idcscan")
    variants.add_argument(
        "--data",
        type=Path,
        required=True,
        help="the dataset it trained on, layout <patient>/<0|1>/*.png: calibration on its "
        "training patients, figures on its validation patients (from the model's identity)",
    )
    variants.add_argument(
        "--max-bac-drop",
        type=float,
        default=0.005,
        help="INT8 ships only if its validation balanced accuracy is at most this much lower",
    )
    variants.add_argument(
        "--min-speedup",
        type=float,
        default=1.7,
        help="INT8 ships only if it scores at least this many times FP32's tiles/s here",
    )
    variants.add_argument(
        "--speed-threads",
        type=int,
        default=1,
        help="onnxruntime threads of the speed check (default 1: per core; 0: all cores)",
    )
    variants.set_defaults(func=_models_variants)


def _train(args: argparse.Namespace) -> int:
    from idcscan.trainer import train

    metrics = train.main(args)
    print(
        json.dumps(
            {
                "threshold": metrics["threshold"],
                "val": metrics["val"]["overall"],
                "test": metrics["test"]["overall"],
            },
            indent=2,
        )
    )
    return 0


def _compare(args: argparse.Namespace) -> int:
    from idcscan.trainer import compare

    report = compare.main(args)
    print((Path(args.out) / "comparison.md").read_text())
    shipped = (
        f"shipped variant {report['shipped']} -> {Path(args.out) / 'best.onnx'}"
        if report["shipped"]
        else "nothing exported (--no-export)"
    )
    print(f"best by cross-validation: {report['best']} (fold {report['best_fold']}); {shipped}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from idcscan.core.stain import MIN_PATIENTS
    from idcscan.trainer.data import load_patches
    from idcscan.trainer.export import export_run
    from idcscan.trainer.stain import reference_of_folder

    run = Path(args.run)
    metrics_path = run / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{run} is not a finished training run (no metrics.json)")
    metrics = json.loads(metrics_path.read_text())
    root = Path(metrics["data"]["root"])
    if args.data is not None:
        patches = load_patches(Path(args.data))
    else:
        patches = load_patches(root, metrics["split"]["val"])
    # The stain reference of the patients it trained on, where their folder is at hand and they
    # are enough to measure one; without it the model flags no slide.
    train_patients = metrics["split"]["train"]
    stain = None
    if root.is_dir() and len(train_patients) >= MIN_PATIENTS:
        stain = reference_of_folder(root, train_patients)
    else:
        print(
            f"no stain reference: {len(train_patients)} training patients under {root} "
            f"(at least {MIN_PATIENTS} needed); add one with `idcscan models stain-reference`",
            file=sys.stderr,
        )
    summary = export_run(
        run, Path(args.out), patches.tiles, patches.labels, int8=args.int8, stain=stain
    )
    print(json.dumps(summary, indent=2))
    return 0


def _threshold_floors(args: argparse.Namespace) -> int:
    from idcscan.trainer.floors import fold_predictions, markdown, study

    rows = study(fold_predictions(args.config), args.floors)
    print(json.dumps(rows, indent=2) if args.json else markdown(rows))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from idcscan.trainer.evaluate import evaluate_onnx, json_safe

    report = json_safe(evaluate_onnx(Path(args.model), Path(args.data), args.threshold))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    overall = report["overall"]
    print(
        f"{report['model_version']} ({report['architecture']}) on {report['data']}, "
        f"threshold {overall['threshold']:.4f}"
    )
    for name in (
        "n",
        "missed_idc",
        "tp",
        "fp",
        "tn",
        "fn",
        "accuracy",
        "balanced_accuracy",
        "precision",
        "recall",
        "specificity",
        "f1",
        "auroc",
        "pr_auc",
    ):
        value = overall[name]
        print(f"  {name:18} {value:.4f}" if isinstance(value, float) else f"  {name:18} {value}")
    return 0


def _models_register(args: argparse.Namespace) -> int:
    from idcscan.core.registry import register_model

    if args.model is None:
        from idcscan.core.onnxmodel import reference_model
        from idcscan.core.settings import get_settings

        model = get_settings().model_path or reference_model()
    else:
        model = Path(args.model)
    row = register_model(model, activate=args.activate)
    print(
        f"registered model {row['id']}: {row['version']} ({row['architecture']})"
        + (", active" if row["active"] else "")
    )
    return 0


def _models_stain_reference(args: argparse.Namespace) -> int:
    from idcscan.core.onnxmodel import read_manifest
    from idcscan.trainer.stain import reference_of_folder, write_reference

    try:  # an idcscan model, or a clear error before any work
        read_manifest(args.model)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as exc:  # onnxruntime's load errors share no narrower base class
        raise ValueError(f"{args.model} is not an ONNX model onnxruntime can load") from exc
    reference = reference_of_folder(args.data, args.patients)
    write_reference(args.model, reference)
    training = reference.training
    print(
        f"{args.model}: stain reference of {training['patients']} patients "
        f"({training['tiles']} stained tiles); limits: stain distance "
        f"{reference.max_stain_distance:.2f} (training largest "
        f"{training['stain_distance']['max']:.2f}), far-tile share "
        f"{reference.max_far_tile_fraction:.1%} (training largest "
        f"{training['far_tile_fraction']['max']:.1%})"
    )
    return 0


def _models_uint8_input(args: argparse.Namespace) -> int:
    from idcscan.trainer.data import load_patches
    from idcscan.trainer.uint8input import PARITY_TOLERANCE, convert_file

    if not Path(args.model).is_file():
        raise FileNotFoundError(f"no such model file: {args.model}")
    tiles = load_patches(args.data).tiles if args.data is not None else None
    target = args.out or args.model
    difference = convert_file(args.model, target, tiles)
    checked = f"{len(tiles)} patches" if tiles is not None else "random tiles"
    print(
        f"{target}: takes uint8 (N, H, W, 3) tiles; probabilities within {difference:.1e} of "
        f"the original on {checked} (tolerance {PARITY_TOLERANCE:.0e})"
    )
    return 0


def _models_variants(args: argparse.Namespace) -> int:
    from idcscan.trainer.precision import make_variants

    report = make_variants(
        args.model,
        args.data,
        max_bac_drop=args.max_bac_drop,
        min_speedup=args.min_speedup,
        speed_threads=args.speed_threads,
    )
    print(json.dumps(report, indent=2))
    int8 = report["int8"]
    if not int8["shipped"]:
        print(f"INT8 not shipped: {int8['not_shipped_because']}", file=sys.stderr)
    return 0
