"""The full-slide benchmark's slide is what it claims: a 3-level JPEG pyramid at 0.25 um/px that
the service opens, read at level 2 by the reference model, about half of its tiles tissue."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.full_slide import build_slide
from idcscan.core.onnxmodel import read_manifest, reference_model
from idcscan.core.slides import open_slide
from idcscan.worker.tiling import find_tissue, plan_tiling


def test_a_small_full_slide_is_a_jpeg_pyramid_half_tissue(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "slide.tiff"
    build_slide(path, scale=0.05)  # 5,000 x 4,000 px
    with tifffile.TiffFile(path) as tiff:
        assert [page.compression.name for page in tiff.pages] == ["JPEG"] * 3
        assert all(page.is_tiled for page in tiff.pages)
    with open_slide(path) as slide:
        assert slide.dimensions == (5000, 4000)
        assert slide.mpp == pytest.approx(0.25)
        assert [round(d) for d in slide.level_downsamples] == [1, 4, 16]
        plan = plan_tiling(slide, read_manifest(reference_model()).spec)
        assert plan.level == 2 and plan.level_mpp == pytest.approx(4.0, rel=0.01)
        share = find_tissue(slide, plan).tissue.mean()
    assert 0.35 < share < 0.65
    assert not path.with_suffix(".partial").exists()
