"""`scripts/pack_patches.py`: a dataset carried to a remote trainer in one file, and back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from idcscan.trainer.data import load_patches, patient_counts, read_tile
from tests.conftest import SAMPLE_PATIENTS

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pack_patches.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_pack_keeps_every_patient_and_its_class_ratio_and_unpacks_to_the_layout(
    tmp_path: Path,
) -> None:
    pack = tmp_path / "patches.npz"
    assert run("pack", str(SAMPLE_PATIENTS), str(pack), "--max-per-patient", "40").returncode == 0
    assert run("unpack", str(pack), str(tmp_path / "idc")).returncode == 0

    original, carried = patient_counts(SAMPLE_PATIENTS), patient_counts(tmp_path / "idc")
    assert carried.keys() == original.keys()
    for patient, (negatives, positives) in carried.items():
        assert 39 <= negatives + positives <= 41
        share = original[patient][1] / sum(original[patient])
        assert abs(positives / (negatives + positives) - share) < 0.05
    # The trainer reads it; each patch is its original within JPEG quality 90 (about 33 dB).
    patches = load_patches(tmp_path / "idc")
    assert len(patches) == sum(map(sum, carried.values()))
    for path in sorted((tmp_path / "idc").rglob("*.png"))[::25]:
        copy, _ = read_tile(path)
        original, _ = read_tile(SAMPLE_PATIENTS / path.relative_to(tmp_path / "idc"))
        error = np.mean((copy.astype(float) - original.astype(float)) ** 2)
        assert 10 * np.log10(255**2 / max(error, 1e-9)) > 28
