"""Patient-level splits: no patient in two splits, the published lists honoured."""

from __future__ import annotations

from pathlib import Path

import pytest

from idcscan.trainer.splits import Split, canonical_lists, kfold_split, make_split, seeded_split

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


def test_seeded_split_when_the_lists_do_not_apply() -> None:
    patients = [f"p{i}" for i in range(20)]
    split = make_split(patients, seed=3)
    assert split.method == "seeded"
    assert_disjoint_and_complete(split, patients)
    assert split == seeded_split(patients, 3)
    assert split != seeded_split(patients, 4)
    with pytest.raises(ValueError, match="no validation or no test"):
        make_split(patients, method="canonical")


@pytest.mark.parametrize("fold", range(5))
def test_kfold_by_patient(fold: int) -> None:
    split = kfold_split(LOCAL_PATIENTS, 5, fold, seed=1)
    assert_disjoint_and_complete(split, LOCAL_PATIENTS)
    tests = [set(kfold_split(LOCAL_PATIENTS, 5, f, seed=1).test) for f in range(5)]
    assert set().union(*tests) == set(LOCAL_PATIENTS)
    assert sum(len(t) for t in tests) == len(LOCAL_PATIENTS)


def test_split_refuses_a_patient_in_two_splits() -> None:
    with pytest.raises(ValueError, match="both train and test"):
        Split(("a", "b"), ("c",), ("b",), method="manual")


def test_loaded_patches_follow_the_split(tiny_dataset: Path) -> None:
    from idcscan.trainer.data import load_patches

    patches = load_patches(tiny_dataset)
    split = make_split(patches.patient_ids, seed=0)
    sets = [patches.of_patients(getattr(split, s)) for s in ("train", "val", "test")]
    owners = [set(s.patients.tolist()) for s in sets]
    assert owners[0].isdisjoint(owners[1]) and owners[0].isdisjoint(owners[2])
    assert owners[1].isdisjoint(owners[2])
    assert sum(len(s) for s in sets) == len(patches)
