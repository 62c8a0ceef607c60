"""Class imbalance strategies: which training patches an epoch visits, and the loss weights.

- `undersample`: every IDC patch, and as many non-IDC patches drawn at random once (the seed's
  choice), the same ones every epoch.
- `oversample`: every patch, IDC patches repeated until the classes are even; each repeat is
  augmented afresh, so the copies differ.
- `weighted`: every patch once; the loss weighs each class by N / (2 * N_class).
- `none`: every patch once, plain loss.
"""

from __future__ import annotations

import numpy as np

STRATEGIES = ("undersample", "oversample", "weighted", "none")


def _check(labels: np.ndarray, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown balance strategy {strategy!r}; choose from {STRATEGIES}")
    positives = np.flatnonzero(labels == 1)
    negatives = np.flatnonzero(labels == 0)
    if strategy != "none" and (len(positives) == 0 or len(negatives) == 0):
        raise ValueError("balancing needs patches of both classes in the training patients")
    return positives, negatives


def epoch_indices(labels: np.ndarray, strategy: str, seed: int) -> np.ndarray:
    """The training patch indices one epoch visits (before shuffling), for `strategy`."""
    positives, negatives = _check(labels, strategy)
    rng = np.random.default_rng(seed)
    if strategy == "undersample":
        minority, majority = sorted((positives, negatives), key=len)
        kept = rng.choice(majority, size=len(minority), replace=False)
        return np.sort(np.concatenate([minority, kept]))
    if strategy == "oversample":
        minority, majority = sorted((positives, negatives), key=len)
        repeats = np.resize(minority, len(majority))  # cycles through every minority patch
        return np.sort(np.concatenate([majority, repeats]))
    return np.arange(len(labels))


def class_weights(labels: np.ndarray, strategy: str) -> np.ndarray | None:
    """Loss weights per class (index 0 = no IDC, 1 = IDC) for `weighted`, else None."""
    _check(labels, strategy)
    if strategy != "weighted":
        return None
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return (len(labels) / (2.0 * counts)).astype(np.float32)
