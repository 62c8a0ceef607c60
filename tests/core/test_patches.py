from __future__ import annotations

import pytest

from idcscan.core.patches import PatchName, iter_patches, parse_patch_name, patient_dirs
from tests.conftest import SAMPLE_PATIENTS


def test_parses_the_dataset_name_to_zero_based_pixels() -> None:
    assert parse_patch_name("8863_idx5_x1001_y751_class0.png") == PatchName("8863", 1000, 750, 0)
    assert parse_patch_name("/data/9125/1/9125_idx5_x51_y1_class1.png") == PatchName(
        "9125", 50, 0, 1
    )


@pytest.mark.parametrize(
    "name",
    [
        "8863_idx5_x1001_y751_class2.png",
        "8863_idx5_x1001_y751.png",
        "slide.svs",
        "8863_idx5_x0_y1_class1.png",
    ],
)
def test_rejects_other_names(name: str) -> None:
    with pytest.raises(ValueError):
        parse_patch_name(name)


def test_sample_patients_are_complete_and_consistent() -> None:
    patients = patient_dirs(SAMPLE_PATIENTS)
    assert [p.name for p in patients] == ["8916", "9125"]
    counts = {p.name: [0, 0] for p in patients}
    for patient in patients:
        for _path, patch in iter_patches(patient):
            assert patch.patient == patient.name
            assert patch.x % 50 == 0 and patch.y % 50 == 0
            counts[patient.name][patch.label] += 1
    assert counts == {"8916": [60, 111], "9125": [369, 239]}


def test_mislabelled_folder_is_an_error(tmp_path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "7_idx5_x1_y1_class0.png").write_bytes(b"")
    with pytest.raises(ValueError, match="labelled 0"):
        list(iter_patches(tmp_path))
