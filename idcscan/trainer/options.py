"""Command-line options of `idcscan train` and `idcscan compare`; torch-free so the CLI stays light."""

from __future__ import annotations

import argparse

from idcscan.trainer.balance import STRATEGIES
from idcscan.trainer.evaluate import THRESHOLD_RULES, VALIDATION_WEIGHTS
from idcscan.trainer.splits import SPLIT_METHODS

ARCHITECTURES = ("alexnet", "resnet18", "densenet121")
# The presets of idcscan.trainer.augment.AUGMENTATIONS (named here so the CLI needs no torch).
AUGMENTATION_NAMES = ("geometric", "current", "stain")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset root: <patient>/<0|1>/*.png")
    parser.add_argument(
        "--split",
        default="cv",
        choices=SPLIT_METHODS,
        help="patient-level rule: cross-validation, the published lists, or a seeded cut "
        "(see idcscan.trainer.splits)",
    )
    parser.add_argument("--folds", type=int, default=5, help="folds of --split cv")
    parser.add_argument(
        "--fold", type=int, default=0, help="`train` with --split cv: the held-out fold"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds splits, sampling, weights")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--width",
        type=float,
        default=1.0,
        help="channel multiplier of every network (1.0 = published widths)",
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--max-per-patient",
        type=int,
        default=0,
        help="patches drawn per patient and epoch, afresh each epoch (0: all): weighs patients, "
        "not slides, and shortens epochs",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle)")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument(
        "--patience",
        type=int,
        default=0,
        help="stop after this many epochs without a better validation AUROC (0: never; the "
        "one-cycle schedule is noisiest at its peak, where early stopping would cut it short; "
        "the best validation epoch is kept either way)",
    )
    parser.add_argument("--threshold-rule", default="sensitivity", choices=THRESHOLD_RULES)
    parser.add_argument(
        "--min-sensitivity", type=float, default=0.90, help="for --threshold-rule sensitivity"
    )
    parser.add_argument(
        "--validation-weights",
        default="patch",
        choices=VALIDATION_WEIGHTS,
        help="how validation tiles weigh in the epoch kept, the calibration and the threshold: "
        "each tile once, or each patient alike (see idcscan.trainer.evaluate)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: all)")
    parser.add_argument(
        "--pretrained",
        default=None,
        metavar="PATH",
        help="state dict of ImageNet weights to start from (matching names/shapes)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run folder's last checkpoint"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_balance_argument(parser: argparse.ArgumentParser, many: bool = False) -> None:
    if many:
        parser.add_argument(
            "--balance",
            nargs="+",
            default=["oversample"],
            choices=STRATEGIES,
            help="class-imbalance strategies to compare",
        )
        parser.add_argument(
            "--augment",
            nargs="+",
            default=["stain"],
            choices=AUGMENTATION_NAMES,
            help="augmentation presets to compare (see idcscan.trainer.augment)",
        )
    else:
        parser.add_argument("--balance", default="oversample", choices=STRATEGIES)
        parser.add_argument(
            "--augment",
            default="stain",
            choices=AUGMENTATION_NAMES,
            help="augmentation preset (see idcscan.trainer.augment)",
        )


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of `idcscan train`."""
    add_data_arguments(parser)
    parser.add_argument("--arch", default="resnet18", choices=ARCHITECTURES)
    add_balance_argument(parser)
    add_training_arguments(parser)
    parser.add_argument("--out", required=True, help="run folder")


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of `idcscan compare`."""
    add_data_arguments(parser)
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    add_balance_argument(parser, many=True)
    add_training_arguments(parser)
    parser.add_argument("--int8", action="store_true", help="also export an INT8 variant")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="folds trained at once, each in its own process (a GPU host: several per card; "
        "give each --threads 1 or 2)",
    )
    parser.add_argument(
        "--no-export",
        action="store_true",
        help="compare only: no inference variants, nothing shipped, test patients unscored",
    )
    parser.add_argument("--out", required=True, help="comparison folder")
