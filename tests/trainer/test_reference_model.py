"""The shipped reference model: its contract, its size, and its figures on the sample patients.

Both sample patients (8916, 9125) are test patients of the reference model: `idcscan evaluate`
on them, through onnxruntime and the shared preprocessing, must reproduce the per-patient
figures the trainer recorded with torch (`idcscan/models/idc-reference.metrics.json`).
"""

from __future__ import annotations

import json

import pytest

from idcscan.core.onnxmodel import OnnxModel
from idcscan.trainer.evaluate import evaluate_onnx
from tests.conftest import ROOT, SAMPLE_PATIENTS

REFERENCE = ROOT / "idcscan" / "models" / "idc-reference.onnx"
RECORDED = ROOT / "idcscan" / "models" / "idc-reference.metrics.json"


def test_reference_model_is_small_and_carries_its_contract() -> None:
    assert REFERENCE.stat().st_size <= 16 * 10**6
    model = OnnxModel(REFERENCE, provider="cpu")
    recorded = json.loads(RECORDED.read_text())
    assert model.spec.mpp == 4.0 and model.spec.tile_size == 50
    assert model.spec.threshold == pytest.approx(recorded["threshold"])
    assert model.manifest.version.startswith(f"idc-{recorded['arch']}-")
    split = model.manifest.identity["trained_on"]["split"]
    assert {"8916", "9125"} <= set(split["test"])
    assert not {"8916", "9125"} & (set(split["train"]) | set(split["val"]))


def test_reference_model_reproduces_its_figures_on_the_sample_patients() -> None:
    recorded = json.loads(RECORDED.read_text())["test"]["per_patient"]
    report = evaluate_onnx(REFERENCE, SAMPLE_PATIENTS, provider="cpu")
    for patient in ("8916", "9125"):
        got, expected = report["per_patient"][patient], recorded[patient]
        assert got["n"] == expected["n"]
        for key in ("tp", "fp", "tn", "fn"):
            # onnxruntime and torch agree within 1e-4; a patch that close to the threshold may
            # flip, so one patch of slack per count.
            assert abs(got[key] - expected[key]) <= 1, (patient, key)
        assert got["auroc"] == pytest.approx(expected["auroc"], abs=1e-3)
