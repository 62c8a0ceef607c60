"""`idcscan assemble`: a patient's patches as a slide, with its ground truth in both label forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from idcscan.cli import main
from idcscan.core.labels import GridGeometry, parse_labels
from tests.conftest import SAMPLE_PATIENTS


def test_assemble_command_writes_a_slide_and_the_same_truth_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "8916.tiff"
    assert main(["assemble", str(SAMPLE_PATIENTS / "8916"), "--out", str(out)]) == 0
    assert "171 patches (111 IDC)" in capsys.readouterr().out
    assert out.exists()
    grid = GridGeometry(rows=34, cols=24, tile0=50.0, stride0=50.0)
    from_csv = parse_labels(out.with_suffix(".tiles.csv").read_bytes()).tile_labels(grid)
    from_geojson = parse_labels(out.with_suffix(".geojson").read_bytes()).tile_labels(grid)
    assert int((from_csv == 1).sum()) == 111
    # GeoJSON names only IDC; every other tile reads as negative, the CSV leaves gaps unlabelled.
    np.testing.assert_array_equal(from_csv == 1, from_geojson == 1)
