from __future__ import annotations

import numpy as np
import pytest

from idcscan.core.metrics import Confusion, auroc, average_precision, binary_report


def test_confusion_counts_and_figures() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    predicted = np.array([1, 1, 0, 0, 0, 1, 0, 1])
    c = Confusion.from_labels(labels, predicted)
    assert (c.tp, c.fp, c.tn, c.fn) == (3, 1, 3, 1)
    assert c.sensitivity == 0.75 and c.specificity == 0.75
    assert c.precision == 0.75 and c.f1 == 0.75 and c.balanced_accuracy == 0.75
    assert c.as_dict()["missed_idc"] == 1
    assert (c + c).tp == 6


def _auroc_by_pairs(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_auroc_equals_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    scores = np.round(rng.random(400) * 0.5 + 0.3 * labels, 2)  # rounding makes ties
    assert auroc(labels, scores) == pytest.approx(_auroc_by_pairs(labels, scores), abs=1e-12)


def test_perfect_and_reversed_scores() -> None:
    labels = np.array([0, 0, 1, 1])
    assert auroc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert average_precision(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0


def test_average_precision_by_hand() -> None:
    # ranked: 1 (P=1), 0, 1 (P=2/3): AP = 0.5 * 1 + 0.5 * 2/3
    assert average_precision(np.array([1, 0, 1]), np.array([0.9, 0.8, 0.7])) == pytest.approx(5 / 6)


def test_one_class_gives_nan_auroc() -> None:
    assert np.isnan(auroc(np.zeros(5), np.random.default_rng(0).random(5)))


def test_binary_report_names_missed_idc() -> None:
    report = binary_report(np.array([1, 1, 0]), np.array([0.9, 0.2, 0.1]), threshold=0.5)
    assert report["missed_idc"] == 1 and report["tp"] == 1 and report["n"] == 3
