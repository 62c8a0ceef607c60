"""`idcscan compare` and `idcscan export` through the command line, on the tiny dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from idcscan.cli import main as cli
from idcscan.core.onnxmodel import OnnxModel

pytestmark = pytest.mark.train


def test_compare_reports_selects_on_validation_and_exports(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--data",
        str(tiny_dataset),
        "--out",
        str(out),
        "--archs",
        "alexnet",
        "resnet18",
        "--balance",
        "undersample",
        "weighted",
        "--width",
        "0.125",
        "--epochs",
        "1",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert cli(argv) == 0
    report = json.loads((out / "comparison.json").read_text())
    names = [row["name"] for row in report["models"]]
    assert names == [
        "alexnet-undersample",
        "alexnet-weighted",
        "resnet18-undersample",
        "resnet18-weighted",
    ]
    best = max(report["models"], key=lambda r: (r["val"]["auroc"], r["val"]["balanced_accuracy"]))
    assert report["best"] == best["name"]
    for name in names:
        assert (out / f"confusion-{name}.png").stat().st_size > 0
    assert (out / "curves-val.png").is_file() and (out / "curves-test.png").is_file()
    assert f"**{best['name']}**" in (out / "comparison.md").read_text()
    model = OnnxModel(out / "best.onnx", provider="cpu")
    assert model.manifest.identity["architecture"] == best["arch"]
    assert model.spec.threshold == pytest.approx(best["threshold"])
    assert "best on validation" in capsys.readouterr().out


def test_export_command_with_int8_variant(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    assert cli(["export", str(trained_run), "--out", str(out), "--int8"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parity_max_abs_difference"] <= 1e-4
    assert summary["int8"]["bytes"] < summary["bytes"]
    assert "accuracy_change" in summary["int8"]
    quantized = OnnxModel(out.with_name("m-int8.onnx"), provider="cpu")
    assert quantized.spec == OnnxModel(out, provider="cpu").spec
