"""Probability calibration (temperature and bias) and the expected calibration error, torch-free.

A network trained with a balanced sampler or a weighted loss is confident in a way that does not
match how often it is right; the heatmap's colours should mean what they say (0.8 = IDC four
times in five). Two numbers fitted on the validation patients fix that: the logit margin (IDC
logit minus no-IDC logit) is divided by a temperature T (Guo et al. 2017) and shifted by a bias b,
`P(IDC) = sigmoid(margin / T + b)` (Platt scaling). Temperature alone cannot undo the prior shift
of balanced training (the network learnt a 50% IDC prior where the slides hold about 25%): on the
first cross-validation fold it left the calibration error where it was (0.204 -> 0.209); the bias
is what moves it. Both are monotone, so no tile crosses a threshold chosen after them, and both
ship inside the ONNX graph.
"""

from __future__ import annotations

import numpy as np

# The margin of a probability of 1 - 1e-7: float32 probabilities cannot say more.
_MAX_MARGIN = 16.0


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def margins_from_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """The logit margin of each IDC probability (the inverse of `sigmoid`), clipped."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.clip(np.log(p) - np.log1p(-p), -_MAX_MARGIN, _MAX_MARGIN)


def negative_log_likelihood(labels: np.ndarray, margins: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of `sigmoid(margins / temperature)` against `labels`."""
    z = np.asarray(margins, dtype=np.float64) / temperature
    y = np.asarray(labels).astype(np.float64)
    # log(1 + exp(-z)) for positives and log(1 + exp(z)) for negatives, computed stably.
    return float(np.mean(np.logaddexp(0.0, -z) * y + np.logaddexp(0.0, z) * (1 - y)))


def fit_temperature(labels: np.ndarray, margins: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises the validation NLL (golden-section on log T).

    The NLL is convex in 1/T, so the search over log T finds the single minimum.
    """
    labels = np.asarray(labels)
    if labels.all() or not labels.any():
        raise ValueError("fitting a temperature needs validation patches of both classes")
    low, high = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa = negative_log_likelihood(labels, margins, float(np.exp(a)))
    fb = negative_log_likelihood(labels, margins, float(np.exp(b)))
    for _ in range(60):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = negative_log_likelihood(labels, margins, float(np.exp(a)))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = negative_log_likelihood(labels, margins, float(np.exp(b)))
    return float(np.exp((low + high) / 2.0))


def fit_platt(
    labels: np.ndarray, margins: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, float]:
    """(temperature, bias) minimising the validation NLL of `sigmoid(margin / T + b)`, each tile
    counting `weights` (1 each when None; `patient_weights`: every patient alike).

    Newton's method on (1/T, b), the NLL being convex in both; a negative slope (a model worse
    than chance on validation) is refused rather than shipped upside down.
    """
    y = np.asarray(labels).astype(np.float64)
    if y.all() or not y.any():
        raise ValueError("calibrating needs validation patches of both classes")
    m = np.asarray(margins, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    theta = np.array([1.0 / fit_temperature(y, m), 0.0])  # start from the temperature alone
    design = np.stack([m, np.ones_like(m)], axis=1)

    def nll(t: np.ndarray) -> float:
        z = design @ t
        return float(np.sum(w * (np.logaddexp(0.0, -z) * y + np.logaddexp(0.0, z) * (1 - y))))

    for _ in range(50):
        p = sigmoid(design @ theta)
        gradient = design.T @ (w * (p - y))
        hessian = (design * (w * p * (1 - p))[:, None]).T @ design + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while nll(theta - scale * step) > nll(theta) and scale > 1e-6:  # backtracking
            scale /= 2
        theta = theta - scale * step
        if np.abs(scale * step).max() < 1e-10:
            break
    if theta[0] <= 0:
        raise ValueError("the model ranks validation tiles worse than chance; not calibrating")
    return float(1.0 / theta[0]), float(theta[1])


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = 15
) -> float:
    """ECE: the mean gap between confidence and accuracy over equal-width bins of P(IDC),
    weighted by the share of tiles in each bin (the reliability diagram's summary)."""
    labels = np.asarray(labels).astype(np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(labels) == 0:
        raise ValueError("the calibration error needs at least one tile")
    index = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    mean_probability = np.bincount(index, weights=probabilities, minlength=bins)
    positives = np.bincount(index, weights=labels, minlength=bins)
    gap = np.abs(mean_probability - positives)  # per bin: count * |confidence - frequency|
    return float(gap.sum() / count.sum())
