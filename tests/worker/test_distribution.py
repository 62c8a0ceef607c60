"""The out-of-distribution flag through the worker's own pipeline, with the reference model and
its stain reference: the two non-breast sample slides are `indeterminate`, the sample patients
(breast, from the dataset the model's reference came from) are in distribution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from idcscan.core.onnxmodel import OnnxModel, reference_model
from idcscan.core.slides import open_slide
from idcscan.core.stain import StainCheck
from idcscan.core.summary import SlideCall, SlideSummary
from idcscan.worker.pipeline import score_slide, summarise
from tests.conftest import SAMPLE_PATIENTS, SAMPLE_SVS, SAMPLES

TCGA = SAMPLES / "wsi" / "TCGA-CR-7395-01A-01-TS1.svs"


@pytest.fixture(scope="module")
def model() -> OnnxModel:
    return OnnxModel(reference_model(), provider="cpu", threads=1)


def summary_of(path: Path, model: OnnxModel, mpp: float | None = None) -> SlideSummary:
    with open_slide(path, mpp=mpp) as slide:
        return score_slide(slide, model).summary


@pytest.mark.parametrize(
    ("path", "mpp"),
    [(SAMPLE_SVS, None), (TCGA, 0.5)],  # skin; head and neck, a frozen section with no pixel size
    ids=["CMU-1", "TCGA-CR-7395"],
)
def test_non_breast_slides_are_flagged_and_indeterminate(
    path: Path, mpp: float | None, model: OnnxModel
) -> None:
    summary = summary_of(path, model, mpp)
    assert summary.tissue_tiles > 0
    assert summary.in_distribution is False
    assert summary.slide_call == SlideCall.INDETERMINATE
    assert summary.ood_reason is not None and "training patients'" in summary.ood_reason
    assert summary.stain_distance is not None and model.manifest.stain is not None
    assert summary.stain_distance > model.manifest.stain.max_stain_distance
    assert summary.as_dict()["slide_call"] == "indeterminate"


@pytest.mark.parametrize("patient", ["8916", "9125"])
def test_sample_patients_are_in_distribution(patient: str, model: OnnxModel) -> None:
    summary = summary_of(SAMPLE_PATIENTS / patient, model)
    assert summary.in_distribution is True and summary.ood_reason is None
    assert summary.slide_call == SlideCall.IDC  # both have IDC
    figures = [
        summary.haematoxylin_od,
        summary.haematoxylin_od_sd,
        summary.eosin_od,
        summary.eosin_od_sd,
        summary.far_tile_fraction,
        summary.stain_distance,
    ]
    assert all(value is not None and np.isfinite(value) for value in figures), summary
    assert model.manifest.stain is not None
    assert summary.stain_distance is not None
    assert summary.stain_distance < model.manifest.stain.max_stain_distance


def test_a_model_without_a_stain_reference_flags_nothing(tiny_model: Path) -> None:
    summary = summary_of(SAMPLE_SVS, OnnxModel(tiny_model, provider="cpu", threads=1))
    assert summary.in_distribution is True and summary.stain_distance is None
    assert summary.slide_call != SlideCall.INDETERMINATE


def test_no_tissue_comes_before_the_stain(model: OnnxModel) -> None:
    with open_slide(SAMPLE_SVS) as slide:
        plan = score_slide(slide, model).plan
    off = StainCheck(in_distribution=False, reason="unlike the training data")
    none = np.empty(0, dtype=np.float32)
    assert summarise(plan, none, off).slide_call == SlideCall.NO_TISSUE
    assert summarise(plan, np.array([0.9, 0.9], dtype=np.float32), off).slide_call == (
        SlideCall.INDETERMINATE
    )


def test_idcscan_score_prints_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from idcscan.cli import main

    assert main(["score", str(SAMPLE_SVS), "--out", str(tmp_path / "text")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("indeterminate:")
    assert "out of distribution: the spread of its H&E optical densities" in text
    assert main(["score", str(SAMPLE_SVS), "--out", str(tmp_path / "json"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["in_distribution"] is False and printed["slide_call"] == "indeterminate"
    assert printed["stain_distance"] > 0 and printed["ood_reason"]
