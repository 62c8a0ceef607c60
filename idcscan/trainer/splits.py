"""Patient-level splits: no patient's patches ever lie in two of train, validation and test.

The rule, in order:
1. `canonical`: the published 84/29/49 lists of Janowczyk & Madabhushi (2016), shipped in
   `idcscan/trainer/splits/`. A patient present locally goes to the list naming it; a patient in
   no list goes to *train* (it was never used to choose or report anything in the papers). Used
   when the local patients include at least one validation and one test patient of the lists.
2. `seeded`: otherwise, patients shuffled by the seed and cut in the published proportions
   (84:29:49), at least one patient per split.
3. `--folds K --fold I`: K-fold by patient (seeded): fold I is test, fold I+1 validation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources

import numpy as np

PUBLISHED_PROPORTIONS = (84, 29, 49)


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    method: str

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for name in ("train", "val", "test"):
            for patient in getattr(self, name):
                if patient in seen:
                    raise ValueError(f"patient {patient} is in both {seen[patient]} and {name}")
                seen[patient] = name
        if not self.train or not self.val or not self.test:
            raise ValueError(f"every split needs a patient: {self.sizes()}")

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
        }


def canonical_lists() -> dict[str, set[str]]:
    """The published split, as shipped with idcscan (comment lines start with '#')."""
    lists = {}
    for name in ("train", "val", "test"):
        text = resources.files("idcscan.trainer").joinpath(f"splits/canonical_{name}.txt")
        lines = text.read_text(encoding="utf-8").splitlines()
        lists[name] = {s.strip() for s in lines if s.strip() and not s.startswith("#")}
    return lists


def canonical_split(patients: list[str]) -> Split | None:
    """The published split restricted to `patients`, or None when it has no val or test patient."""
    lists = canonical_lists()
    val = tuple(sorted(p for p in patients if p in lists["val"]))
    test = tuple(sorted(p for p in patients if p in lists["test"]))
    if not val or not test:
        return None
    train = tuple(sorted(p for p in patients if p not in val and p not in test))
    return Split(train, val, test, method="canonical")


def seeded_split(patients: list[str], seed: int) -> Split:
    """Patients shuffled by `seed`, cut in the published proportions; independent of their order."""
    patients = sorted(set(patients))
    if len(patients) < 3:
        raise ValueError(f"a patient-level split needs at least 3 patients, got {len(patients)}")
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    total = sum(PUBLISHED_PROPORTIONS)
    n_test = max(1, round(len(order) * PUBLISHED_PROPORTIONS[2] / total))
    n_val = max(1, round(len(order) * PUBLISHED_PROPORTIONS[1] / total))
    n_test = min(n_test, len(order) - 2)
    n_val = min(n_val, len(order) - n_test - 1)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return Split(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)), method="seeded")


def kfold_split(patients: list[str], folds: int, fold: int, seed: int) -> Split:
    """Fold `fold` of `folds` by patient: that fold is test, the next one validation."""
    patients = sorted(set(patients))
    if folds < 3 or not 0 <= fold < folds:
        raise ValueError(f"need folds >= 3 and 0 <= fold < folds, got folds={folds} fold={fold}")
    if len(patients) < folds:
        raise ValueError(f"{folds} folds need at least {folds} patients, got {len(patients)}")
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    groups = [order[i::folds] for i in range(folds)]
    test, val = groups[fold], groups[(fold + 1) % folds]
    train = [p for p in order if p not in test and p not in val]
    return Split(
        tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)), f"kfold-{fold}-of-{folds}"
    )


def make_split(
    patients: list[str], method: str = "auto", seed: int = 0, folds: int = 0, fold: int = 0
) -> Split:
    """The split for `patients` by the module's rule; `method` is auto, canonical or seeded."""
    patients = sorted(set(patients))
    if folds:
        return kfold_split(patients, folds, fold, seed)
    if method in ("auto", "canonical"):
        split = canonical_split(patients)
        if split is not None:
            return split
        if method == "canonical":
            raise ValueError(
                "the local patients include no validation or no test patient of "
                "the published split; use --split seeded"
            )
    if method not in ("auto", "canonical", "seeded"):
        raise ValueError(f"unknown split method {method!r}")
    return seeded_split(patients, seed)
