"""Class balancing: how many patches of each class an epoch visits."""

from __future__ import annotations

import numpy as np
import pytest

from idcscan.trainer.balance import class_weights, epoch_indices

LABELS = np.array([0] * 70 + [1] * 30)


def counts(indices: np.ndarray) -> tuple[int, int]:
    chosen = LABELS[indices]
    return int((chosen == 0).sum()), int((chosen == 1).sum())


def test_undersample_keeps_every_positive_and_as_many_negatives() -> None:
    indices = epoch_indices(LABELS, "undersample", seed=0)
    assert counts(indices) == (30, 30)
    assert set(np.flatnonzero(LABELS == 1)) <= set(indices.tolist())
    assert len(set(indices.tolist())) == 60
    # The seed's choice: the same seed removes the same negatives, another seed others.
    assert np.array_equal(indices, epoch_indices(LABELS, "undersample", seed=0))
    assert not np.array_equal(indices, epoch_indices(LABELS, "undersample", seed=1))


def test_oversample_repeats_positives_up_to_the_negatives() -> None:
    indices = epoch_indices(LABELS, "oversample", seed=0)
    assert counts(indices) == (70, 70)
    repeats = np.bincount(indices, minlength=100)[LABELS == 1]
    assert repeats.min() >= 2 and repeats.max() <= 3  # every positive, spread evenly


@pytest.mark.parametrize("strategy", ["weighted", "none"])
def test_weighted_and_none_visit_every_patch_once(strategy: str) -> None:
    assert counts(epoch_indices(LABELS, strategy, seed=0)) == (70, 30)


def test_weighted_loss_weights_are_inverse_class_frequencies() -> None:
    weights = class_weights(LABELS, "weighted")
    assert weights is not None
    np.testing.assert_allclose(weights, [100 / 140, 100 / 60], rtol=1e-6)
    # Weighted this way, both classes contribute equally to the loss.
    assert weights[0] * 70 == pytest.approx(weights[1] * 30)
    assert class_weights(LABELS, "undersample") is None


def test_unknown_strategy_and_single_class() -> None:
    with pytest.raises(ValueError, match="unknown balance"):
        epoch_indices(LABELS, "smote", seed=0)
    with pytest.raises(ValueError, match="both classes"):
        epoch_indices(np.zeros(5, dtype=np.int64), "undersample", seed=0)


def test_cap_per_patient_weighs_patients_and_redraws_each_epoch() -> None:
    # One "complete slide" of 1,000 patches (30% IDC) and ten 50-patch samples (20% IDC).
    labels = np.array(([0] * 700 + [1] * 300) + ([0] * 40 + [1] * 10) * 10)
    patients = np.array(["big"] * 1000 + [f"s{i}" for i in range(10) for _ in range(50)])
    first = epoch_indices(labels, "none", 0, patients, max_per_patient=100, epoch=0)
    second = epoch_indices(labels, "none", 0, patients, max_per_patient=100, epoch=1)
    assert len(first) == len(second) == 100 + 10 * 50  # same length every epoch
    big = first[patients[first] == "big"]
    assert len(big) == 100 and int(labels[big].sum()) == 30  # class ratio kept
    assert set(big) != set(second[patients[second] == "big"])  # a fresh draw
    assert np.array_equal(first, epoch_indices(labels, "none", 0, patients, 100, epoch=0))
    over = epoch_indices(labels, "oversample", 0, patients, max_per_patient=100, epoch=0)
    assert int((labels[over] == 1).sum()) == int((labels[over] == 0).sum())
    with pytest.raises(ValueError, match="needs the patient"):
        epoch_indices(labels, "none", 0, None, max_per_patient=100)
