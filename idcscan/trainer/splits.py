"""Patient-level splits: no patient's patches ever lie in two of train, validation and test.

Three rules (`--split`):

- `cv` (the default): patient-level cross-validation. The published *test* patients present
  locally are set aside first: they are scored once, at the very end, by the model that
  cross-validation chose. Every other patient is dealt into K folds (`--folds`, 5 by default)
  stratified by IDC share and by size (complete slides and 70-patch samples spread evenly). In
  fold I, fold I is held out (the figures reported for that fold), fold I+1 is the validation fold
  (early stopping, threshold, calibration) and the rest is trained on. Every patient is held out
  exactly once, so the mean over folds speaks for all of them.
- `canonical`: the published 84/29/49 lists of Janowczyk & Madabhushi (2016), shipped in
  `idcscan/trainer/splits/`. A patient present locally goes to the list naming it; a patient in
  no list goes to *train* (it was never used to choose or report anything in the papers).
- `seeded`: patients shuffled by the seed and cut in the published proportions (84:29:49), for a
  dataset without the published patients.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources

import numpy as np

PUBLISHED_PROPORTIONS = (84, 29, 49)
SPLIT_METHODS = ("cv", "canonical", "seeded")
# A patient with more patches than this counts as "large" when folds are stratified: the
# dataset mixes complete slides (hundreds to thousands of patches) with 70-patch samples.
LARGE_PATIENT_PATCHES = 200


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


def stratified_folds(
    counts: dict[str, tuple[int, int]], folds: int, seed: int
) -> list[tuple[str, ...]]:
    """Patients dealt into `folds` groups, stratified by size and by IDC share.

    `counts` maps a patient to its (no IDC, IDC) patch counts. Patients are ordered by (large or
    not, IDC share), with a seeded random tie-break, and each run of `folds` consecutive patients
    is dealt one to a fold in a seeded random order: every fold gets a like share of large
    patients and of every IDC level.
    """
    if folds < 3:
        raise ValueError(f"cross-validation needs at least 3 folds, got {folds}")
    if len(counts) < folds:
        raise ValueError(f"{folds} folds need at least {folds} patients, got {len(counts)}")
    rng = np.random.default_rng(seed)
    patients = sorted(counts)
    tie = dict(zip(patients, rng.permutation(len(patients)), strict=True))

    def key(patient: str) -> tuple[bool, float, int]:
        negative, positive = counts[patient]
        total = negative + positive
        return (total > LARGE_PATIENT_PATCHES, positive / max(total, 1), int(tie[patient]))

    ordered = sorted(patients, key=key)
    groups: list[list[str]] = [[] for _ in range(folds)]
    for start in range(0, len(ordered), folds):
        block = ordered[start : start + folds]
        # Deal the block to the folds holding the fewest patients, in random order among equals,
        # so that folds never differ by more than one patient.
        targets = sorted(range(folds), key=lambda f: (len(groups[f]), rng.random()))
        for patient, target in zip(block, targets, strict=False):
            groups[target].append(patient)
    return [tuple(sorted(g)) for g in groups]


def cv_split(
    counts: dict[str, tuple[int, int]], folds: int, fold: int, seed: int
) -> tuple[Split, tuple[str, ...]]:
    """Fold `fold` of the cross-validation, and the published test patients set aside.

    Returns the fold's split (train; validation = the next fold; test = the held-out fold) and
    the published test patients present in `counts`, which no fold contains.
    """
    if not 0 <= fold < folds:
        raise ValueError(f"need 0 <= fold < folds, got folds={folds} fold={fold}")
    published_test = canonical_lists()["test"]
    final_test = tuple(sorted(p for p in counts if p in published_test))
    pool = {p: c for p, c in counts.items() if p not in published_test}
    groups = stratified_folds(pool, folds, seed)
    held_out, val = groups[fold], groups[(fold + 1) % folds]
    train = tuple(sorted(p for g in groups for p in g if p not in held_out and p not in val))
    return Split(train, val, held_out, f"cv-fold-{fold}-of-{folds}"), final_test


def make_split(patients: list[str], method: str = "canonical", seed: int = 0) -> Split:
    """The split for `patients` by the `canonical` or `seeded` rule (see the module's docstring)."""
    patients = sorted(set(patients))
    if method == "canonical":
        split = canonical_split(patients)
        if split is None:
            raise ValueError(
                "the local patients include no validation or no test patient of "
                "the published split; use --split seeded or --split cv"
            )
        return split
    if method == "seeded":
        return seeded_split(patients, seed)
    raise ValueError(f"unknown split method {method!r}; choose from {SPLIT_METHODS}")
