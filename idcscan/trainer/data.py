"""The IDC patch dataset in memory: every patch of the chosen patients as one uint8 array.

30,000 patches of 50x50x3 bytes are 225 MB: loading them once and augmenting whole batches in
torch is far faster than decoding PNGs per sample in loader workers. Torch-free, so that
`idcscan evaluate` can read a folder without importing torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from idcscan.core.patches import iter_patches, patient_dirs
from idcscan.core.tiles import DATASET_TILE_SIZE, pad_tile


@dataclass(frozen=True)
class PatchSet:
    """Patches with their labels (1 = IDC) and the patient each came from, aligned by index."""

    tiles: np.ndarray
    """uint8 (N, size, size, 3), edge patches padded with background."""
    labels: np.ndarray
    """int64 (N,)."""
    patients: np.ndarray
    """str (N,)."""
    padded: int = 0
    """How many patches were smaller than the tile size and got padded."""

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> PatchSet:
        return PatchSet(self.tiles[index], self.labels[index], self.patients[index])

    def of_patients(self, patients: Iterable[str]) -> PatchSet:
        return self.take(np.flatnonzero(np.isin(self.patients, list(patients))))

    @property
    def patient_ids(self) -> list[str]:
        return sorted(set(self.patients.tolist()))

    def counts(self) -> dict[str, int]:
        positives = int(self.labels.sum())
        return {
            "patients": len(self.patient_ids),
            "patches": len(self),
            "idc": positives,
            "no_idc": len(self) - positives,
        }


def read_tile(path: Path, size: int = DATASET_TILE_SIZE) -> tuple[np.ndarray, bool]:
    """One patch as uint8 RGB (size, size, 3), and whether it had to be padded."""
    with Image.open(path) as image:
        tile = np.asarray(image.convert("RGB"), dtype=np.uint8)
    padded = tile.shape[0] != size or tile.shape[1] != size
    return pad_tile(tile, size), padded


def find_patients(root: Path) -> list[str]:
    """Patient ids of a folder in the dataset's layout; a clear error when there are none."""
    ids = [p.name for p in patient_dirs(Path(root))]
    if not ids:
        raise ValueError(f"{root} holds no patient folders in the layout <patient>/<0|1>/*.png")
    return ids


def patient_counts(root: Path) -> dict[str, tuple[int, int]]:
    """(no IDC, IDC) patch counts of every patient under `root`, from the file names alone."""
    counts = {}
    for folder in patient_dirs(Path(root)):
        labels = [patch.label for _, patch in iter_patches(folder)]
        counts[folder.name] = (labels.count(0), labels.count(1))
    if not counts:
        raise ValueError(f"{root} holds no patient folders in the layout <patient>/<0|1>/*.png")
    return counts


def load_patches(
    root: Path, patients: Sequence[str] | None = None, size: int = DATASET_TILE_SIZE
) -> PatchSet:
    """Every patch of `patients` (default: all) under `root`, in a stable order."""
    root = Path(root)
    ids = list(patients) if patients is not None else find_patients(root)
    tiles: list[np.ndarray] = []
    labels: list[int] = []
    owners: list[str] = []
    padded = 0
    for patient in ids:
        folder = root / patient
        if not folder.is_dir():
            raise FileNotFoundError(f"no such patient folder: {folder}")
        for path, name in iter_patches(folder):
            tile, was_padded = read_tile(path, size)
            padded += was_padded
            tiles.append(tile)
            labels.append(name.label)
            owners.append(patient)
    if not tiles:
        raise ValueError(f"no patches found under {root} for patients {ids}")
    return PatchSet(
        np.stack(tiles), np.asarray(labels, dtype=np.int64), np.asarray(owners), padded=padded
    )
