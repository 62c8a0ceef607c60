"""`idcscan threshold-floors` refits the sensitivity rule on each fold's validation predictions and
reports what it gives on the fold's held-out patients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from idcscan.cli import main as cli
from idcscan.core.metrics import Confusion
from idcscan.trainer.calibration import sigmoid
from idcscan.trainer.floors import fold_predictions, study


def write_fold(run: Path, fold: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    saved = {}
    for split in ("val", "test"):
        patients = np.repeat([f"{split}{fold}-{i}" for i in range(6)], 50)
        labels = rng.integers(0, 2, patients.size)
        saved[f"{split}_labels"] = labels
        saved[f"{split}_margins"] = 2.0 * labels - 1.0 + rng.normal(0, 1.2, labels.size)
        saved[f"{split}_patients"] = patients
    (run / f"fold-{fold}").mkdir(parents=True)
    np.savez(run / f"fold-{fold}" / "predictions.npz", **saved)
    return saved


def test_floors_report_the_held_out_figures_of_each_refitted_rule(tmp_path: Path) -> None:
    written = [write_fold(tmp_path, fold, seed=fold) for fold in (0, 1, 2)]
    rows = study(fold_predictions(tmp_path), floors=(0.80, 0.90, 0.95), weightings=("patch",))
    assert [r["min_sensitivity"] for r in rows] == [0.80, 0.90, 0.95]
    # Higher floors cut lower on validation: held-out sensitivity only rises, specificity falls.
    assert [r["sensitivity"] for r in rows] == sorted(r["sensitivity"] for r in rows)
    assert [r["specificity"] for r in rows] == sorted(
        (r["specificity"] for r in rows), reverse=True
    )
    # The missed IDC tiles are those of the held-out patients at each fold's own cut.
    from idcscan.trainer.evaluate import choose_threshold

    missed = 0
    for fold in written:
        cut = choose_threshold(fold["val_labels"], sigmoid(fold["val_margins"]), "sensitivity", 0.9)
        val = Confusion.at_threshold(fold["val_labels"], sigmoid(fold["val_margins"]), cut)
        assert val.sensitivity >= 0.9
        missed += Confusion.at_threshold(fold["test_labels"], sigmoid(fold["test_margins"]), cut).fn
    assert rows[1]["missed_idc"] == missed
    assert rows[1]["idc_tiles"] == sum(int(f["test_labels"].sum()) for f in written)


def test_the_command_prints_a_table_and_refuses_a_folder_without_folds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for fold in range(2):
        write_fold(tmp_path / "config", fold, seed=10 + fold)
    assert cli(["threshold-floors", str(tmp_path / "config"), "--floors", "0.9"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| validation weights | floor | missed IDC")
    assert [line.split("|")[1].strip() for line in table[2:]] == ["patch", "patient"]
    assert cli(["threshold-floors", str(tmp_path)]) == 2
    assert "no fold-*/predictions.npz" in capsys.readouterr().err
