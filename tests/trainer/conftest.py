"""Trainer fixtures: a small dataset of real sample patches, and one tiny trained, exported run.

The samples hold two patients; cross-validation needs more, so half of patient 9125's patches are
dealt round-robin into six pseudo-patients `p1`-`p6` (each with both classes). Half of patient
8916's stay as `8916`, a published test patient, which `--split cv` sets aside. Training and
export happen once per session.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SAMPLE_PATIENTS


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven patient folders of real patches (about 390 in all), linked from the samples."""
    root = tmp_path_factory.mktemp("tiny-idc")
    files = {p: sorted((SAMPLE_PATIENTS / p).glob("*/*.png")) for p in ("8916", "9125")}
    groups = {"8916": files["8916"][::2]}
    groups.update({f"p{i + 1}": files["9125"][2 * i :: 12] for i in range(6)})
    for patient, paths in groups.items():
        for path in paths:
            folder = root / patient / path.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / path.name).symlink_to(path.resolve())
    return root


def training_args(data: Path, out: Path, **overrides: Any) -> argparse.Namespace:
    from idcscan.trainer.train import get_args_parser

    argv = [
        "--data",
        str(data),
        "--out",
        str(out),
        "--arch",
        "resnet18",
        "--width",
        "0.125",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--folds",
        "3",
        "--no-progress",
        "--device",
        "cpu",
    ]
    args = get_args_parser().parse_args(argv)
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.fixture(scope="session")
def trained_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of a narrow ResNet-18 on the tiny dataset."""
    pytest.importorskip("torch")
    from idcscan.trainer import train

    run = tmp_path_factory.mktemp("run")
    train.main(training_args(tiny_dataset, run, balance="oversample"))
    return run


@pytest.fixture(scope="session")
def exported_model(trained_run: Path, tiny_dataset: Path) -> tuple[Path, dict[str, Any]]:
    """The tiny run exported to ONNX (parity-checked against torch on the tiny dataset)."""
    from idcscan.trainer.data import load_patches
    from idcscan.trainer.export import export_run

    patches = load_patches(tiny_dataset)
    out = trained_run / "model.onnx"
    summary = export_run(trained_run, out, patches.tiles, patches.labels)
    return out, summary
