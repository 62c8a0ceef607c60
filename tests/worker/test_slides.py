"""Slide readers: formats, pixel size, limits and bad input."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idcscan.core.errors import InvalidInput
from idcscan.core.slides import open_slide
from tests.conftest import SAMPLE_PATIENTS, SAMPLE_SVS, SAMPLES


def test_svs_has_pixel_size_and_white_background() -> None:
    with open_slide(SAMPLE_SVS) as slide:
        assert slide.format == "aperio"
        assert slide.mpp == pytest.approx(0.499)
        assert slide.dimensions == (2220, 2967)
        region = slide.read_region((2200, 2950), 0, (40, 40))
        assert region.shape == (40, 40, 3) and region.dtype == np.uint8
        # Beyond the slide's edge OpenSlide returns transparent pixels: white, not black.
        assert (region[-5:, -5:] == 255).all()


def test_job_mpp_overrides_the_slide() -> None:
    with open_slide(SAMPLE_SVS, mpp=0.25) as slide:
        assert slide.mpp == 0.25


def test_real_slide_without_pixel_size_is_a_clear_error() -> None:
    path = SAMPLES / "wsi" / "TCGA-CR-7395-01A-01-TS1.svs"  # bundled: a real slide with no MPP
    with pytest.raises(InvalidInput) as info:
        open_slide(path)
    assert info.value.code == "no-pixel-size"
    with open_slide(path, mpp=0.5) as slide:
        assert slide.level_count == 2


def test_png_without_pixel_size_needs_one(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (64, 48), (200, 100, 150)).save(path)
    with pytest.raises(InvalidInput) as info:
        open_slide(path)
    assert info.value.code == "no-pixel-size"
    with open_slide(path, mpp=2.0) as slide:
        assert slide.format == "png" and slide.dimensions == (64, 48)
        assert (slide.read_region((60, 40), 0, (8, 8))[-1, -1] == 255).all()


def test_flat_tiff_resolution_tags_give_the_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "flat.tif"
    # 2500 px per cm = 4 um/px.
    Image.new("RGB", (100, 80), "white").save(path, resolution=2500.0, resolution_unit=3)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(4.0)


def test_screen_dpi_is_not_a_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "screen.jpg"
    Image.new("RGB", (32, 32), "white").save(path, dpi=(72, 72))
    with pytest.raises(InvalidInput, match="no pixel size"):
        open_slide(path)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.svs"
    path.write_bytes(b"%PDF-1.4 this is not a slide\n" * 100)
    with pytest.raises(InvalidInput) as info:
        open_slide(path)
    assert info.value.code == "unsupported-format"


def test_dimensions_beyond_the_limit(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        open_slide(SAMPLE_SVS, max_pixels=1000 * 1000)
    assert info.value.code == "slide-too-large"


def test_patch_folder_and_zip_read_the_same(patient_zip: Path) -> None:
    with open_slide(SAMPLE_PATIENTS / "8916") as folder, open_slide(patient_zip) as archive:
        assert folder.format == archive.format == "patch-layout"
        assert folder.mpp == 4.0
        assert folder.dimensions == archive.dimensions == (1200, 1700)
        assert folder.regions == archive.regions
        assert len(folder.regions or ()) == 171
        np.testing.assert_array_equal(
            folder.read_region((0, 0), 0, (1200, 1700)),
            archive.read_region((0, 0), 0, (1200, 1700)),
        )


def test_patches_sit_at_their_coordinates() -> None:
    name = "8916_idx5_x1001_y851_class0.png"
    patch = np.asarray(Image.open(SAMPLE_PATIENTS / "8916" / "0" / name).convert("RGB"))
    with open_slide(SAMPLE_PATIENTS / "8916") as slide:
        np.testing.assert_array_equal(slide.read_region((1000, 850), 0, (50, 50)), patch)


@pytest.mark.parametrize(
    "member", ["../evil/0/x_idx5_x1_y1_class0.png", "/etc/0/x_idx5_x1_y1_class0.png"]
)
def test_zip_escaping_its_folder_is_refused(tmp_path: Path, member: str) -> None:
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, b"not read")
    with pytest.raises(InvalidInput) as info:
        open_slide(path)
    assert info.value.code == "unsafe-archive"


def test_assembled_tiff_is_lossless_and_pyramidal(assembled: Path) -> None:
    with open_slide(assembled) as tiff, open_slide(SAMPLE_PATIENTS / "8916") as patches:
        assert tiff.format == "generic-tiff"
        assert tiff.mpp == pytest.approx(4.0)
        assert tiff.dimensions == patches.dimensions
        assert tiff.level_count >= 3 and tiff.level_downsamples[1] == pytest.approx(2.0)
        np.testing.assert_array_equal(
            tiff.read_region((0, 0), 0, tiff.dimensions),
            patches.read_region((0, 0), 0, tiff.dimensions),
        )
    assert assembled.with_suffix(".geojson").exists()
    assert assembled.with_suffix(".tiles.csv").read_text().count("\n") == 172


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_svs_is_invalid_input(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "truncated.svs"
    data = SAMPLE_SVS.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InvalidInput) as info, open_slide(path) as slide:
        slide.read_region((0, 0), 0, slide.dimensions)
    assert info.value.code == "truncated-slide"


def test_damaged_zip_is_invalid_input_not_a_crash(tmp_path: Path) -> None:
    """A zip whose member data is corrupt (a bad CRC or deflate stream) is a truncated upload."""
    archive = tmp_path / "damaged.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted((SAMPLE_PATIENTS / "8916").rglob("*.png"))[:20]:
            out.write(path, path.relative_to(SAMPLE_PATIENTS).as_posix())
    with zipfile.ZipFile(archive) as intact:
        victim = intact.infolist()[5]
        start = victim.header_offset + 30 + len(victim.filename.encode()) + len(victim.extra)
    data = bytearray(archive.read_bytes())
    for offset in range(start + 400, start + 440):  # past the PNG header, in the pixel data
        data[offset] ^= 0xFF
    archive.write_bytes(bytes(data))

    with pytest.raises(InvalidInput) as failure, open_slide(archive) as slide:
        slide.read_region((0, 0), 0, slide.dimensions)
    assert failure.value.code == "truncated-slide"
