"""`idcscan compare` and `idcscan export` through the command line, on the tiny dataset."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from idcscan.cli import main as cli
from idcscan.core.onnxmodel import OnnxModel

pytestmark = pytest.mark.train


def test_compare_cross_validates_selects_and_ships_a_variant(
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
        "--folds",
        "3",
        "--width",
        "0.125",
        "--epochs",
        "1",
        "--max-per-patient",
        "40",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert cli(argv) == 0
    report = json.loads((out / "comparison.json").read_text())
    names = [row["name"] for row in report["models"]]
    assert names == ["alexnet-undersample-stain", "resnet18-undersample-stain"]
    # Every patient but the published test patient is held out exactly once.
    held_out = [p for split in report["splits"] for p in split["test"]]
    assert sorted(held_out) == [f"p{i}" for i in range(1, 7)]
    assert report["final_test_patients"] == ["8916"]
    for row in report["models"]:
        assert len(row["cv"]["per_fold"]) == 3
        folds = [f["fn"] for f in row["cv"]["per_fold"]]
        assert row["cv"]["fn"]["mean"] == pytest.approx(sum(folds) / 3)
        assert row["cv"]["pooled"]["fn"] == sum(folds)
        assert (out / f"confusion-{row['name']}.png").stat().st_size > 0
    best = max(
        report["models"],
        key=lambda r: (r["cv"]["auroc"]["mean"], r["cv"]["balanced_accuracy"]["mean"]),
    )
    assert report["best"] == best["name"]
    assert (out / "curves-held-out.png").is_file()
    assert f"**{best['name']}**" in (out / "comparison.md").read_text()

    # TTA is cross-validated per view count; the shipped variant obeys the 2x cost rule.
    variants = report["variants"]
    assert {"tta-1", "tta-2", "tta-4", "tta-8", "ensemble-3"} <= set(variants)
    assert all(len(variants[f"tta-{v}"]["cv"]["per_fold"]) == 3 for v in (1, 2, 4, 8))
    assert variants[report["shipped"]]["slowdown"] <= 2.0
    model = OnnxModel(out / "best.onnx", provider="cpu")
    assert model.manifest.identity["architecture"] == best["arch"]
    assert model.spec.threshold == pytest.approx(variants[report["shipped"]]["threshold"])
    # The stain reference of every patient it saw, not the set-aside test patient.
    assert model.manifest.stain is not None and model.manifest.stain.training["patients"] == 6
    # The published test patient was scored once, by the shipped model, and recorded with it.
    final = report["final_test"][report["shipped"]]
    assert final["patients"] == ["8916"]
    assert model.manifest.identity["test_metrics"]["fn"] == final["overall"]["fn"]
    # ... and through torch, recorded beside the model: onnxruntime reproduces it.
    recorded = json.loads((out / "best.metrics.json").read_text())
    assert recorded["split"]["test"] == ["8916"]
    for key in ("tp", "fp", "tn", "fn"):
        assert abs(recorded["test"]["overall"][key] - final["overall"][key]) <= 1
    card = (out / "MODEL_CARD.md").read_text()
    assert "Cross-validated figures" in card and "<IDC dataset>" in card
    assert str(tiny_dataset) not in card  # no local path in what may be committed
    assert "best by cross-validation" in capsys.readouterr().out

    # Slide level: the held-out pseudo-patients reassembled and scored by the worker's pipeline;
    # the rule calls every whole slide idc and goes into the shipped model's tile contract.
    assert cli(["slide-rule", str(out), "--data", str(tiny_dataset), "--min-patches", "20"]) == 0
    slide_level = json.loads((out / "slide-level.json").read_text())
    whole = [s for s in slide_level["slides"] if s["kind"] == "whole"]
    assert sorted(s["patient"] for s in whole) == [f"p{i}" for i in range(1, 7)]
    assert all(s["idc_area_mm2"] >= slide_level["slide_min_idc_mm2"] for s in whole)
    assert slide_level["errors"]["missed_idc_slides"] == 0
    shipped = OnnxModel(out / "best.onnx", provider="cpu").spec
    assert shipped.slide_min_idc_mm2 == pytest.approx(slide_level["slide_min_idc_mm2"])
    assert (out / "slide-level.png").read_bytes().startswith(b"\x89PNG")


def test_export_command_with_int8_variant(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    assert cli(["export", str(trained_run), "--out", str(out), "--int8"]) == 0
    printed = capsys.readouterr()
    summary = json.loads(printed.out)
    assert summary["parity_max_abs_difference"] <= 1e-4
    assert summary["int8"]["bytes"] < summary["bytes"]
    assert "accuracy_change" in summary["int8"]
    quantized = OnnxModel(out.with_name("m-int8.onnx"), provider="cpu")
    exported = OnnxModel(out, provider="cpu")
    assert quantized.spec == exported.spec
    # It reads the uint8 tiles as its first quantized tensor: no float normalisation left.
    graph = onnx.load(str(quantized.path)).graph
    assert [n.op_type for n in graph.node if "idcscan_nchw" in n.input] == ["DequantizeLinear"]
    # Two training patients are too few for a stain reference: said, and none written.
    assert len(json.loads((trained_run / "metrics.json").read_text())["split"]["train"]) < 3
    assert "no stain reference: 2 training patients" in printed.err
    assert exported.manifest.stain is None and quantized.manifest.stain is None


def test_compare_trains_folds_in_parallel_and_can_stop_before_exporting(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def compare(out: Path, *extra: str) -> dict:
        argv = ["compare", "--data", str(tiny_dataset), "--out", str(out), "--archs", "alexnet"]
        argv += ["--balance", "undersample", "weighted", "--folds", "3", "--width", "0.125"]
        argv += ["--epochs", "1", "--max-per-patient", "40", "--threads", "1", "--no-progress"]
        argv += ["--device", "cpu", "--no-export", *extra]
        assert cli(argv) == 0
        return json.loads((out / "comparison.json").read_text())

    with caplog.at_level("INFO", logger="idcscan.trainer.compare"):
        parallel = compare(tmp_path / "parallel", "--jobs", "2")
    assert "training 6 folds in 2 processes" in caplog.text
    # Nothing chosen for shipping: no variants, no model file, the test patient left unscored.
    assert parallel["shipped"] is None and parallel["variants"] == {}
    assert parallel["final_test"] == {}
    assert not (tmp_path / "parallel" / "best.onnx").exists()
    assert "nothing exported" in (tmp_path / "parallel" / "comparison.md").read_text()
    # No path of this machine in what may be committed.
    assert str(tmp_path) not in (tmp_path / "parallel" / "comparison.json").read_text()

    # The worker processes train exactly what one process would (same seeds, same folds).
    sequential = compare(tmp_path / "sequential")
    for mine, theirs in zip(parallel["models"], sequential["models"], strict=True):
        assert mine["name"] == theirs["name"]
        for a, b in zip(mine["cv"]["per_fold"], theirs["cv"]["per_fold"], strict=True):
            assert {k: a[k] for k in ("tp", "fp", "tn", "fn")} == {
                k: b[k] for k in ("tp", "fp", "tn", "fn")
            }
