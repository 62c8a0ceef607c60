"""A scored slide against its ground truth: labels per tile and the confusion matrix.

A step of its own, after scoring, that the caller chooses: the job runner when a job came with
labels (or its slide carries them, as a patch folder does), `idcscan score --labels`, and the
slide rule. Scoring itself never reads ground truth.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from idcscan.core.labels import GroundTruth, from_regions
from idcscan.core.metrics import Confusion
from idcscan.core.slides import Slide
from idcscan.worker.pipeline import SlideScore


def ground_truth(slide: Slide, labels: GroundTruth | None) -> GroundTruth | None:
    """The labels given, else the ones a patch-layout slide carries (each patch's class), else
    none: a slide without ground truth is scored but not evaluated."""
    if labels is not None:
        return labels
    if slide.regions is not None:
        return from_regions(slide.regions)
    return None


def confusion_of(
    label_grid: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    probability: np.ndarray,
    threshold: float,
) -> Confusion:
    """Scored labelled tiles at `threshold`, plus IDC tiles the tissue mask skipped (missed, fn)."""
    scored = np.zeros(label_grid.shape, dtype=bool)
    scored[rows, cols] = True
    tile_labels = label_grid[rows, cols]
    known = tile_labels >= 0
    confusion = Confusion.at_threshold(tile_labels[known], probability[known], threshold)
    skipped_idc = int(np.count_nonzero((label_grid == 1) & ~scored))
    return confusion + Confusion(fn=skipped_idc)


def evaluate(score: SlideScore, truth: GroundTruth) -> SlideScore:
    """The score with each tile's label and the confusion matrix at the model's threshold."""
    label_grid = truth.tile_labels(score.plan.grid)
    return dataclasses.replace(
        score,
        labels=label_grid[score.rows, score.cols],
        label_grid=label_grid,
        confusion=confusion_of(
            label_grid, score.rows, score.cols, score.probability, score.plan.spec.threshold
        ),
    )
