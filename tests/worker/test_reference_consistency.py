"""One tile contract, end to end: a patient's patches reassembled into a pyramidal slide and scored
by the worker's pipeline give the same confusion matrix as the trainer's patch-level evaluation
recorded with the reference model, tile for tile. Only negative tiles that the tissue mask skips
(near-white patches the dataset kept) may differ, and they are accounted for exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from idcscan.core.assemble import assemble
from idcscan.core.labels import parse_labels
from idcscan.core.onnxmodel import OnnxModel
from idcscan.core.patches import iter_patches
from idcscan.core.slides import open_slide
from idcscan.worker.evaluation import evaluate
from idcscan.worker.pipeline import score_slide
from tests.conftest import ROOT, SAMPLE_PATIENTS

REFERENCE = ROOT / "idcscan" / "models" / "idc-reference.onnx"
RECORDED = ROOT / "idcscan" / "models" / "idc-reference.metrics.json"


@pytest.mark.parametrize("patient", ["8916", "9125"])
def test_slide_scoring_reproduces_the_patch_evaluation(patient: str, tmp_path: Path) -> None:
    recorded = json.loads(RECORDED.read_text())["test"]["per_patient"][patient]
    slide_path = tmp_path / f"{patient}.tiff"
    assemble(SAMPLE_PATIENTS / patient, slide_path)
    truth = parse_labels(slide_path.with_suffix(".geojson").read_bytes())

    with open_slide(str(slide_path)) as slide:
        score = evaluate(score_slide(slide, OnnxModel(REFERENCE)), truth)

    assert score.confusion is not None and score.label_grid is not None
    scored = np.zeros(score.label_grid.shape, dtype=bool)
    scored[score.rows, score.cols] = True
    tile = (
        score.plan.spec.tile_size
    )  # the assembled slide is at the model's scale: one patch, one tile
    negatives = [
        (p.y // tile, p.x // tile)
        for _, p in iter_patches(SAMPLE_PATIENTS / patient)
        if p.label == 0
    ]
    skipped_negatives = sum(not scored[row, col] for row, col in negatives)
    assert skipped_negatives <= 5, "the tissue mask should keep nearly every dataset patch"
    assert (score.confusion.tp, score.confusion.fp, score.confusion.fn) == (
        recorded["tp"],
        recorded["fp"],
        recorded["fn"],
    )
    assert score.confusion.tn + skipped_negatives == recorded["tn"]
