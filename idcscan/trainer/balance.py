"""Class imbalance strategies: which training patches an epoch visits, and the loss weights.

- `undersample`: every IDC patch, and as many non-IDC patches drawn at random once (the seed's
  choice), the same ones every epoch.
- `oversample`: every patch, IDC patches repeated until the classes are even; each repeat is
  augmented afresh, so the copies differ.
- `weighted`: every patch once; the loss weighs each class by N / (2 * N_class).
- `none`: every patch once, plain loss.

With `max_per_patient`, each epoch first draws at most that many patches of every patient
(keeping the patient's class ratio), afresh each epoch: a complete slide of 2,000 patches then
weighs like a few sampled patients, not like thirty, and over the epochs all its patches are seen.
The strategy applies to what was drawn.
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


def cap_per_patient(
    labels: np.ndarray, patients: np.ndarray, cap: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of at most `cap` patches per patient, the patient's class ratio kept (sorted).

    The number drawn of each class depends only on the counts, so every epoch's draw has the
    same size and class balance (the learning-rate schedule counts on a fixed epoch length).
    """
    kept = []
    for patient in np.unique(patients):
        mine = np.flatnonzero(patients == patient)
        if len(mine) <= cap:
            kept.append(mine)
            continue
        positive, negative = mine[labels[mine] == 1], mine[labels[mine] == 0]
        n_positive = round(cap * len(positive) / len(mine))
        kept.append(rng.choice(positive, size=n_positive, replace=False))
        kept.append(rng.choice(negative, size=cap - n_positive, replace=False))
    return np.sort(np.concatenate(kept))


def epoch_indices(
    labels: np.ndarray,
    strategy: str,
    seed: int,
    patients: np.ndarray | None = None,
    max_per_patient: int = 0,
    epoch: int = 0,
) -> np.ndarray:
    """The training patch indices one epoch visits (before shuffling), for `strategy`."""
    _check(labels, strategy)
    if max_per_patient > 0:
        if patients is None:
            raise ValueError("max_per_patient needs the patient of every patch")
        rng = np.random.default_rng([seed, epoch])
        drawn = cap_per_patient(labels, patients, max_per_patient, rng)
        return drawn[_balanced(labels[drawn], strategy, rng)]
    return _balanced(labels, strategy, np.random.default_rng(seed))


def _balanced(labels: np.ndarray, strategy: str, rng: np.random.Generator) -> np.ndarray:
    positives, negatives = _check(labels, strategy)
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
    """Loss weights per class (index 0 = no IDC, 1 = IDC) for `weighted`, else None.

    Pass the labels an epoch visits (after `max_per_patient`), whose class counts the weights undo.
    """
    _check(labels, strategy)
    if strategy != "weighted":
        return None
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return (len(labels) / (2.0 * counts)).astype(np.float32)
