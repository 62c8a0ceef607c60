"""The decision threshold is chosen on validation scores by a declared rule."""

from __future__ import annotations

import numpy as np
import pytest

from idcscan.core.metrics import Confusion, auroc
from idcscan.trainer.evaluate import choose_threshold, split_report, validation_weights

RNG = np.random.default_rng(7)
LABELS = RNG.integers(0, 2, 400)
SCORES = np.clip(0.35 * LABELS + RNG.normal(0.35, 0.2, 400), 0, 1).astype(np.float32)


def figures_at(threshold: float) -> Confusion:
    return Confusion.at_threshold(LABELS, SCORES, threshold)


def test_balanced_accuracy_rule_finds_the_best_cut() -> None:
    threshold = choose_threshold(LABELS, SCORES, "balanced-accuracy")
    best = max(figures_at(t).balanced_accuracy for t in np.unique(SCORES))
    assert figures_at(threshold).balanced_accuracy == pytest.approx(best)


def test_sensitivity_rule_keeps_sensitivity_with_fewest_false_alarms() -> None:
    threshold = choose_threshold(LABELS, SCORES, "sensitivity", min_sensitivity=0.9)
    assert figures_at(threshold).sensitivity >= 0.9
    higher = np.unique(SCORES)[np.unique(SCORES) > threshold]
    assert all(figures_at(t).sensitivity < 0.9 for t in higher)


def test_the_default_rule_puts_sensitivity_first() -> None:
    threshold = choose_threshold(LABELS, SCORES)
    assert threshold == choose_threshold(LABELS, SCORES, "sensitivity", min_sensitivity=0.9)
    assert figures_at(threshold).sensitivity >= 0.9


def test_rules_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.ones(5), np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_threshold(LABELS, SCORES, "f2")


def test_split_report_per_patient_adds_up() -> None:
    patients = np.array(["a", "b"] * 200)
    report = split_report(LABELS, SCORES, patients, 0.5)
    per_patient = report["per_patient"]
    assert set(per_patient) == {"a", "b"}
    for key in ("tp", "fp", "tn", "fn"):
        assert per_patient["a"][key] + per_patient["b"][key] == report["overall"][key]


def test_patient_weights_let_every_patient_count_alike() -> None:
    # Patient "big" has 300 tiles, each of the others 20: unweighted, "big" sets the threshold.
    rng = np.random.default_rng(11)
    patients = np.array(["big"] * 300 + [f"p{i}" for i in range(10) for _ in range(20)])
    labels = rng.integers(0, 2, patients.size)
    scores = np.where(patients == "big", 0.3, 0.0) + 0.4 * labels + rng.normal(0, 0.1, labels.size)
    weights = validation_weights(patients, "patient")
    totals = {p: weights[patients == p].sum() for p in set(patients.tolist())}
    assert all(total == pytest.approx(1.0) for total in totals.values())
    assert validation_weights(patients, "patch") is None
    threshold = choose_threshold(labels, scores, "sensitivity", 0.9, weights)
    found = labels.astype(bool) & (scores >= threshold)
    weighted_sensitivity = weights[found].sum() / weights[labels == 1].sum()
    assert weighted_sensitivity >= 0.9
    # With 10 small patients weighing 10 times the big one, the cut follows them: it is lower
    # than the unweighted rule's, which "big"'s shifted scores pull up.
    assert threshold < choose_threshold(labels, scores, "sensitivity", 0.9)
    with pytest.raises(ValueError, match="unknown validation weights"):
        validation_weights(patients, "slide")


def test_integer_weights_equal_repeated_tiles() -> None:
    repeats = np.random.default_rng(5).integers(1, 4, LABELS.size)
    labels, scores = np.repeat(LABELS, repeats), np.repeat(SCORES, repeats)
    for rule in ("sensitivity", "balanced-accuracy"):
        assert choose_threshold(LABELS, SCORES, rule, 0.9, repeats) == choose_threshold(
            labels, scores, rule, 0.9
        )
    assert auroc(LABELS, SCORES, repeats) == pytest.approx(auroc(labels, scores))
