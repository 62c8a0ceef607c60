"""Patient-level splits: no patient in two splits, the published lists honoured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from idcscan.trainer.splits import (
    Split,
    canonical_lists,
    cv_split,
    make_split,
    seeded_split,
    stratified_folds,
)

LOCAL_PATIENTS = [
    "8863",
    "8864",
    "8865",
    "8867",
    "8913",
    "8914",
    "8916",
    "8917",
    "8918",
    "8950",
    "8951",
    "8955",
    "8974",
    "8975",
    "8980",
    "8984",
    "9022",
    "9023",
    "9035",
    "9036",
    "9037",
    "9041",
    "9076",
    "9077",
    "9078",
    "9083",
    "9123",
    "9124",
    "9125",
    "9126",
]


def assert_disjoint_and_complete(split: Split, patients: list[str]) -> None:
    parts = [set(split.train), set(split.val), set(split.test)]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2])
    assert parts[1].isdisjoint(parts[2])
    assert parts[0] | parts[1] | parts[2] == set(patients)


def test_published_lists_shipped_with_the_package() -> None:
    lists = canonical_lists()
    assert {k: len(v) for k, v in lists.items()} == {"train": 84, "val": 29, "test": 49}
    assert lists["train"].isdisjoint(lists["val"]) and lists["val"].isdisjoint(lists["test"])


def test_canonical_split_of_the_local_patients() -> None:
    split = make_split(LOCAL_PATIENTS)
    assert split.method == "canonical"
    assert split.test == ("8864", "8916", "8918", "9125")
    assert split.val == ("8867", "8914", "8917", "9022", "9023", "9036", "9076", "9078")
    # Patients in no list (8863 8950 8984 9035 9077) go to train.
    assert {"8863", "8950", "8984", "9035", "9077"} <= set(split.train)
    assert_disjoint_and_complete(split, LOCAL_PATIENTS)


def test_seeded_split() -> None:
    patients = [f"p{i}" for i in range(20)]
    split = make_split(patients, "seeded", seed=3)
    assert split.method == "seeded"
    assert_disjoint_and_complete(split, patients)
    assert split == seeded_split(patients, 3)
    assert split != seeded_split(patients, 4)
    with pytest.raises(ValueError, match="no validation or no test"):
        make_split(patients, method="canonical")


def synthetic_counts(n: int = 60, seed: int = 0) -> dict[str, tuple[int, int]]:
    """Patients like the dataset's: a few complete slides, many 70-patch samples, IDC 0-60%."""
    rng = np.random.default_rng(seed)
    counts = {}
    for i in range(n):
        total = int(rng.integers(400, 2000)) if i % 6 == 0 else int(rng.integers(20, 71))
        positive = int(total * rng.uniform(0.0, 0.6))
        counts[f"p{i:03d}"] = (total - positive, positive)
    return counts


def test_stratified_folds_partition_the_patients_evenly() -> None:
    counts = synthetic_counts()
    folds = stratified_folds(counts, 5, seed=0)
    members = [p for fold in folds for p in fold]
    assert sorted(members) == sorted(counts)  # every patient in exactly one fold
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    large = [sum(sum(counts[p]) > 200 for p in fold) for fold in folds]
    assert max(large) - min(large) <= 1  # complete slides spread over the folds


def test_stratification_balances_the_idc_share() -> None:
    counts = synthetic_counts(100, seed=1)

    def spread(folds: list[tuple[str, ...]]) -> float:
        shares = [np.mean([counts[p][1] / sum(counts[p]) for p in fold]) for fold in folds]
        return float(np.ptp(shares))

    stratified = spread(stratified_folds(counts, 5, seed=0))
    # Unstratified folds of the same sizes, dealt at random, for comparison.
    rng = np.random.default_rng(0)
    random_spreads = []
    for _ in range(50):
        order = list(rng.permutation(sorted(counts)))
        random_spreads.append(spread([tuple(order[i::5]) for i in range(5)]))
    assert stratified < np.median(random_spreads) / 2


def test_folds_depend_on_the_seed_only() -> None:
    counts = synthetic_counts()
    shuffled = dict(reversed(list(counts.items())))
    assert stratified_folds(counts, 5, seed=2) == stratified_folds(shuffled, 5, seed=2)
    assert stratified_folds(counts, 5, seed=2) != stratified_folds(counts, 5, seed=3)


def test_cv_split_holds_out_each_patient_once_and_sets_the_published_test_aside() -> None:
    counts = synthetic_counts()
    counts.update({p: (500, 100) for p in ("8864", "8916")})  # two published test patients
    held_out: list[str] = []
    for fold in range(5):
        split, final_test = cv_split(counts, 5, fold, seed=0)
        assert final_test == ("8864", "8916")
        assert_disjoint_and_complete(split, [p for p in counts if p not in final_test])
        assert split.val == cv_split(counts, 5, (fold + 1) % 5, seed=0)[0].test
        held_out += split.test
    assert sorted(held_out) == sorted(p for p in counts if p not in ("8864", "8916"))


def test_cross_validation_needs_enough_patients_and_folds() -> None:
    with pytest.raises(ValueError, match="at least 3 folds"):
        stratified_folds(synthetic_counts(), 2, seed=0)
    with pytest.raises(ValueError, match="5 folds need at least 5 patients"):
        stratified_folds(synthetic_counts(4), 5, seed=0)
    with pytest.raises(ValueError, match="0 <= fold < folds"):
        cv_split(synthetic_counts(), 5, 5, seed=0)


def test_split_refuses_a_patient_in_two_splits() -> None:
    with pytest.raises(ValueError, match="both train and test"):
        Split(("a", "b"), ("c",), ("b",), method="manual")


def test_loaded_patches_follow_the_split(tiny_dataset: Path) -> None:
    from idcscan.trainer.data import load_patches

    patches = load_patches(tiny_dataset)
    split = make_split(patches.patient_ids, "seeded", seed=0)
    sets = [patches.of_patients(getattr(split, s)) for s in ("train", "val", "test")]
    owners = [set(s.patients.tolist()) for s in sets]
    assert owners[0].isdisjoint(owners[1]) and owners[0].isdisjoint(owners[2])
    assert owners[1].isdisjoint(owners[2])
    assert sum(len(s) for s in sets) == len(patches)
