"""The decision threshold is chosen on validation scores by a declared rule."""

from __future__ import annotations

import numpy as np
import pytest

from idcscan.core.metrics import Confusion
from idcscan.trainer.evaluate import choose_threshold, split_report

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
