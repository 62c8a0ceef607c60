"""One epoch on real sample patches, through ONNX export and `idcscan evaluate` (under a minute)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from idcscan.cli import main as cli
from idcscan.core.onnxmodel import OnnxModel
from idcscan.core.tiles import UINT8_NHWC, TileSpec, normalise, pad_tile, to_model_input
from tests.conftest import SAMPLE_PATIENTS

pytestmark = pytest.mark.train


def test_training_writes_figures_threshold_and_checkpoints(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert (trained_run / "checkpoint.pt").is_file() and (trained_run / "best.pt").is_file()
    assert 0.0 <= metrics["threshold"] <= 1.0
    for split in ("val", "test"):
        overall = metrics[split]["overall"]
        assert overall["tp"] + overall["fp"] + overall["tn"] + overall["fn"] == overall["n"]
        assert set(metrics[split]["per_patient"]) == set(metrics["split"][split])
    assert metrics["history"][0]["epoch"] == 1


def test_patient_weighted_validation_keeps_the_sensitivity_floor_per_patient(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    from idcscan.core.metrics import patient_weights
    from idcscan.trainer import train
    from tests.trainer.conftest import training_args

    out = tmp_path / "weighted"
    metrics = train.main(training_args(tiny_dataset, out, validation_weights="patient"))
    assert metrics["validation_weights"] == "patient"
    saved = np.load(out / "predictions.npz")
    weights = patient_weights(saved["val_patients"])
    idc = saved["val_labels"] == 1
    found = idc & (saved["val_probabilities"] >= metrics["threshold"])
    assert weights[found].sum() / weights[idc].sum() >= 0.9


def test_interrupted_training_resumes_where_it_stopped(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from idcscan.trainer import train
    from tests.trainer.conftest import training_args

    straight = train.main(training_args(tiny_dataset, tmp_path / "straight", epochs=2))

    real_train_one_epoch = train.train_one_epoch
    calls = []

    def interrupted(*args: Any, **kwargs: Any) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stopped during the second epoch
        return real_train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.main(training_args(tiny_dataset, tmp_path / "resumed", epochs=2))
    monkeypatch.setattr(train, "train_one_epoch", real_train_one_epoch)
    resumed = train.main(training_args(tiny_dataset, tmp_path / "resumed", epochs=2, resume=True))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    # Seeds, batches, augmentation and RNG state are restored: the same second epoch.
    assert resumed["history"][1]["loss"] == pytest.approx(straight["history"][1]["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="resume with the same value"):
        train.main(training_args(tiny_dataset, tmp_path / "resumed", epochs=3, resume=True))


def test_export_parity_and_metadata_round_trip(
    exported_model: tuple[Path, dict[str, Any]], trained_run: Path
) -> None:
    path, summary = exported_model
    assert summary["parity_max_abs_difference"] <= 1e-4
    metrics = json.loads((trained_run / "metrics.json").read_text())
    model = OnnxModel(path, provider="cpu")
    assert model.spec == TileSpec(
        threshold=metrics["threshold"],
        model_version=summary["version"],
        extra={"architecture": "resnet18", "balance": "oversample"},
        input_format=UINT8_NHWC,
    )
    identity = model.manifest.identity
    assert identity["architecture"] == "resnet18"
    # A cross-validation fold names its held-out patients apart from the set-aside test.
    split = identity["trained_on"]["split"]
    assert split["held_out"] == metrics["split"]["test"]
    assert split["test"] == metrics["split"]["set_aside_test"] == ["8916"]
    assert identity["confusion"] == {
        k: metrics["test"]["overall"][k] for k in ("tp", "fp", "tn", "fn")
    }
    # Dynamic batch: one tile and seven tiles alike.
    tiles = np.full((7, 50, 50, 3), 200, dtype=np.uint8)
    assert model.predict(tiles[:1]).shape == (1,) and model.predict(tiles).shape == (7,)


def test_trainer_and_worker_paths_give_identical_inputs_and_outputs(
    exported_model: tuple[Path, dict[str, Any]], trained_run: Path, tmp_path: Path
) -> None:
    import torch

    from idcscan.trainer.augment import ClassificationPresetEval
    from idcscan.trainer.data import read_tile
    from idcscan.trainer.export import load_run

    # A real patch and an edge patch (the same patch cut to 50x37, as ~1% of the dataset are).
    source = sorted((SAMPLE_PATIENTS / "9125" / "1").glob("*.png"))[0]
    edge = tmp_path / "9125_idx5_x1_y1_class1.png"
    with Image.open(source) as image:
        image.convert("RGB").crop((0, 0, 50, 37)).save(edge)
    model = OnnxModel(exported_model[0], provider="cpu")
    network, _ = load_run(trained_run)
    for path in (source, edge):
        trainer_tile, _ = read_tile(path)
        with Image.open(path) as image:  # the worker's way: pixels, padded, shared preprocessing
            worker_tile = pad_tile(np.asarray(image.convert("RGB")), model.spec.tile_size)
        trainer_input = ClassificationPresetEval(model.spec)(trainer_tile[None]).numpy()
        # The worker feeds the tile itself; the graph normalises it as the trainer did.
        assert np.array_equal(to_model_input(worker_tile[None], model.spec), worker_tile[None])
        assert np.array_equal(trainer_input, normalise(worker_tile[None], model.spec))
        with torch.inference_mode():
            trainer_probability = network(torch.from_numpy(trainer_input)).numpy()
        worker_probability = model.predict(worker_tile[None])
        np.testing.assert_allclose(trainer_probability, worker_probability, atol=1e-4)


def test_evaluate_command_reports_every_figure(
    exported_model: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli(
            [
                "evaluate",
                "--model",
                str(exported_model[0]),
                "--data",
                str(SAMPLE_PATIENTS),
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    overall = report["overall"]
    for key in (
        "accuracy",
        "balanced_accuracy",
        "precision",
        "recall",
        "specificity",
        "f1",
        "auroc",
        "pr_auc",
        "tp",
        "fp",
        "tn",
        "fn",
    ):
        assert key in overall
    assert overall["n"] == 779
    assert set(report["per_patient"]) == {"8916", "9125"}
    assert sum(p["n"] for p in report["per_patient"].values()) == 779


def test_evaluate_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], exported_model: tuple[Path, dict[str, Any]]
) -> None:
    assert cli(["evaluate", "--model", str(exported_model[0]), "--data", str(tmp_path)]) == 2
    assert cli(["evaluate", "--model", str(tmp_path / "none.onnx"), "--data", str(tmp_path)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("idcscan: error:") for e in errors)
