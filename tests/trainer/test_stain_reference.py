"""`idcscan models stain-reference`: the training data's stain written into an existing model,
torch-free, the graph and every other metadata entry left as they were."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from idcscan.cli import main as cli
from idcscan.core.onnxmodel import OnnxModel
from idcscan.core.stain import METADATA_KEY
from tests.conftest import SAMPLE_PATIENTS
from tests.worker.models import build_model


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_the_command_adds_the_reference_to_an_exported_model(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_model(tmp_path / "m.onnx")
    before = metadata(model)
    assert METADATA_KEY not in before
    probe = OnnxModel(model, provider="cpu").predict(
        np.full((2, 50, 50, 3), (180, 90, 160), dtype=np.uint8)
    )

    assert cli(["models", "stain-reference", str(model), "--data", str(tiny_dataset)]) == 0
    assert "stain reference of 7 patients" in capsys.readouterr().out
    after = metadata(model)
    assert {k: v for k, v in after.items() if k != METADATA_KEY} == before
    loaded = OnnxModel(model, provider="cpu")
    assert loaded.manifest.stain is not None
    assert loaded.manifest.stain.training["patients"] == 7
    np.testing.assert_array_equal(
        loaded.predict(np.full((2, 50, 50, 3), (180, 90, 160), dtype=np.uint8)), probe
    )

    # Run again on fewer patients: replaced, not added beside.
    argv = ["models", "stain-reference", str(model), "--data", str(tiny_dataset)]
    assert cli([*argv, "--patients", "p1", "p2", "p3"]) == 0
    assert [p.key for p in onnx.load(str(model)).metadata_props].count(METADATA_KEY) == 1
    assert OnnxModel(model, provider="cpu").manifest.stain.training["patients"] == 3  # type: ignore[union-attr]


def test_bad_input_is_one_line_and_leaves_the_model_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_model(tmp_path / "m.onnx")
    original = model.read_bytes()
    two = tmp_path / "two"
    for patient in ("8916", "9125"):
        shutil.copytree(SAMPLE_PATIENTS / patient, two / patient)
    assert cli(["models", "stain-reference", str(model), "--data", str(two)]) == 2
    assert capsys.readouterr().err.strip() == (
        "idcscan: error: a stain reference needs at least 3 patients with stained tiles"
    )
    assert cli(["models", "stain-reference", str(model), "--data", str(tmp_path / "none")]) == 2
    assert "no such dataset folder" in capsys.readouterr().err
    assert model.read_bytes() == original


def test_a_file_that_is_no_model_is_one_line(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a model")
    assert cli(["models", "stain-reference", str(fake), "--data", str(tiny_dataset)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("idcscan: error:") and len(err.strip().splitlines()) == 1
    assert fake.read_bytes() == b"not a model"
