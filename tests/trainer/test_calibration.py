"""Temperature scaling lowers the calibration error of an over-confident model; it never moves
a tile across a threshold chosen after it."""

from __future__ import annotations

import numpy as np
import pytest

from idcscan.trainer.calibration import (
    expected_calibration_error,
    fit_platt,
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


def test_platt_scaling_also_undoes_a_prior_shift() -> None:
    # A model trained on balanced classes: its margins carry a 50% prior where the truth is 20%.
    rng = np.random.default_rng(3)
    true_margin = rng.normal(-1.4, 2.0, 20_000)  # about 25% IDC
    labels = (rng.random(len(true_margin)) < sigmoid(true_margin)).astype(np.int64)
    margins = 2.0 * (true_margin + 1.4)  # over-confident and shifted
    temperature, bias = fit_platt(labels, margins)
    assert temperature == pytest.approx(2.0, rel=0.1) and bias == pytest.approx(-1.4, abs=0.15)
    after = expected_calibration_error(labels, sigmoid(margins / temperature + bias))
    temperature_only = expected_calibration_error(
        labels, sigmoid(margins / fit_temperature(labels, margins))
    )
    assert after < 0.02 < temperature_only


def test_platt_refuses_a_model_worse_than_chance() -> None:
    labels, margins = overconfident(n=2_000)
    with pytest.raises(ValueError, match="worse than chance"):
        fit_platt(labels, -margins)


def test_platt_weights_equal_repeated_tiles() -> None:
    labels, margins = overconfident(n=3_000, seed=4)
    repeats = np.random.default_rng(4).integers(1, 5, labels.size)
    weighted = fit_platt(labels, margins, repeats.astype(float))
    repeated = fit_platt(np.repeat(labels, repeats), np.repeat(margins, repeats))
    assert weighted == pytest.approx(repeated, rel=1e-6)
    assert weighted != pytest.approx(fit_platt(labels, margins), rel=1e-3)
