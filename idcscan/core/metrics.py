"""Confusion statistics and the figures derived from them; every report leads with missed IDC (fn).

Pure numpy so that the trainer, `idcscan evaluate` and the worker compute figures the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


@dataclass(frozen=True)
class Confusion:
    """Counts of a binary decision; positive = IDC."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    @classmethod
    def from_labels(cls, labels: np.ndarray, predicted: np.ndarray) -> Confusion:
        y = np.asarray(labels).astype(bool)
        p = np.asarray(predicted).astype(bool)
        if y.shape != p.shape:
            raise ValueError(f"labels {y.shape} and predictions {p.shape} differ in shape")
        return cls(
            tp=int(np.sum(y & p)),
            fp=int(np.sum(~y & p)),
            tn=int(np.sum(~y & ~p)),
            fn=int(np.sum(y & ~p)),
        )

    @classmethod
    def at_threshold(
        cls, labels: np.ndarray, probabilities: np.ndarray, threshold: float
    ) -> Confusion:
        return cls.from_labels(labels, np.asarray(probabilities) >= threshold)

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(
            self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn
        )

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def accuracy(self) -> float:
        return _ratio(self.tp + self.tn, self.total)

    @property
    def sensitivity(self) -> float:
        """Recall of IDC: the share of IDC tiles found. 1 - sensitivity is the share missed."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def balanced_accuracy(self) -> float:
        return (self.sensitivity + self.specificity) / 2

    def as_dict(self) -> dict[str, float | int]:
        """Counts and figures, missed IDC first."""
        return {
            "missed_idc": self.fn,
            **asdict(self),
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "precision": self.precision,
            "recall": self.sensitivity,
            "specificity": self.specificity,
            "f1": self.f1,
        }


def _ranked(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Cumulative true positives and predicted positives at each distinct score, highest first,
    with the distinct scores and the positives' total; each tile counts `weights` (1 each when
    None)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    w = np.ones(y.size) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y, w = s[order], y[order], w[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(w * y)[distinct]
    predicted = np.cumsum(w)[distinct]
    return tps, predicted, s[distinct], float(w[y].sum())


def roc_curve(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate, true-positive rate and thresholds, one point per distinct score;
    `weights` weigh tiles (e.g. `patient_weights`: every patient counts alike)."""
    tps, predicted, thresholds, positives = _ranked(labels, scores, weights)
    negatives = predicted[-1] - positives
    tpr = np.r_[0.0, tps / positives] if positives > 0 else np.zeros(tps.size + 1)
    fpr = np.r_[0.0, (predicted - tps) / negatives] if negatives > 0 else np.zeros(tps.size + 1)
    return fpr, tpr, np.r_[np.inf, thresholds]


def precision_recall_curve(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and thresholds, from the highest threshold down."""
    tps, predicted, thresholds, positives = _ranked(labels, scores)
    return tps / predicted, tps / max(positives, 1), thresholds


def auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve (trapezoidal; ties handled); NaN when one class is absent."""
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, scores, weights)
    return float(np.trapezoid(tpr, fpr))


def patient_weights(patients: np.ndarray) -> np.ndarray:
    """Per-tile weights under which every patient weighs the same, whatever its tile count: a
    split's few complete slides (a thousand tiles each) would otherwise outvote its many sampled
    patients (at most 70 each)."""
    _, index, counts = np.unique(np.asarray(patients), return_inverse=True, return_counts=True)
    return (1.0 / counts)[index]


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation)."""
    y = np.asarray(labels).astype(bool)
    if not y.any():
        return float("nan")
    precision, recall, _ = precision_recall_curve(y, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_report(
    labels: np.ndarray, scores: np.ndarray, threshold: float
) -> dict[str, float | int]:
    """Every figure idcscan reports for one set of labelled scores at one threshold."""
    confusion = Confusion.at_threshold(labels, scores, threshold)
    return {
        **confusion.as_dict(),
        "auroc": auroc(labels, scores),
        "pr_auc": average_precision(labels, scores),
        "threshold": float(threshold),
        "n": int(np.asarray(labels).size),
    }
