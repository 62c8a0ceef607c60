"""Temperature scaling lowers the calibration error of an over-confident model; it never moves
a tile across a threshold chosen after it."""

from __future__ import annotations

import numpy as np
import pytest

from idcscan.trainer.calibration import (
    expected_calibration_error,
    fit_temperature,
    margins_from_probabilities,
    sigmoid,
)


def overconfident(
    n: int = 20_000, inflation: float = 3.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities; the model reports margins `inflation` times too big."""
    rng = np.random.default_rng(seed)
    true_margin = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < sigmoid(true_margin)).astype(np.int64)
    return labels, true_margin * inflation


def test_temperature_recovers_the_inflation_and_lowers_the_error() -> None:
    labels, margins = overconfident()
    temperature = fit_temperature(labels, margins)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(labels, sigmoid(margins))
    after = expected_calibration_error(labels, sigmoid(margins / temperature))
    assert before > 0.05 and after < before / 3


def test_a_calibrated_model_keeps_a_temperature_near_one() -> None:
    labels, margins = overconfident(inflation=1.0, seed=1)
    assert fit_temperature(labels, margins) == pytest.approx(1.0, rel=0.1)


def test_scaling_keeps_the_order_of_the_tiles() -> None:
    labels, margins = overconfident(n=500)
    scaled = sigmoid(margins / fit_temperature(labels, margins))
    assert np.array_equal(np.argsort(margins, kind="stable"), np.argsort(scaled, kind="stable"))


def test_margins_invert_probabilities() -> None:
    margins = np.linspace(-8, 8, 33)
    assert np.allclose(margins_from_probabilities(sigmoid(margins)), margins, atol=1e-6)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="both classes"):
        fit_temperature(np.ones(10), np.zeros(10))
    with pytest.raises(ValueError, match="at least one tile"):
        expected_calibration_error(np.array([]), np.array([]))
