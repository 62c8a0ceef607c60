"""The reader pool: every tissue tile once, in the single reader's order, whatever the number of
threads; a cancelled job stops reading within a region per thread and leaves no thread behind;
uint8-input models score as their float32 originals. Real slides (an OpenSlide pyramidal TIFF,
an SVS), real onnxruntime."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from idcscan.core.onnxmodel import OnnxModel
from idcscan.core.slides import Slide, open_slide
from idcscan.core.tiles import FLOAT32_NCHW, UINT8_NHWC, to_model_input
from idcscan.trainer.uint8input import convert_file
from idcscan.worker.pipeline import SlideScore, read_blocks, scan_blocks, score_slide
from idcscan.worker.tiling import (
    Cancelled,
    Region,
    TilePlan,
    find_tissue,
    iter_tile_blocks,
    plan_tiling,
    single_pass_mask,
    tile_block_boxes,
)
from tests.conftest import SAMPLE_SVS


class CountingSlide(Slide):
    """A real slide whose regions are counted (reads from several threads at once)."""

    def __init__(self, inner: Slide) -> None:
        self.inner = inner
        self.format, self.mpp = inner.format, inner.mpp
        self.level_dimensions, self.level_downsamples = (
            inner.level_dimensions,
            inner.level_downsamples,
        )
        self.reads = 0
        self._lock = threading.Lock()

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        with self._lock:
            self.reads += 1
        return self.inner.read_region(location, level, size)

    def close(self) -> None:
        self.inner.close()


def _small_blocks(slide: Slide, model: OnnxModel) -> tuple[TilePlan, np.ndarray]:
    """The slide's plan with 3 x 3-tile blocks: many regions, so that order can go wrong."""
    plan = replace(plan_tiling(slide, model.spec), block=3)
    return plan, find_tissue(slide, plan).tissue


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("idcscan-reader")]


@pytest.mark.parametrize("readers", [1, 2, 4])
def test_pool_gives_every_tile_once_in_the_single_readers_order(
    assembled: Path, tiny_model: Path, readers: int
) -> None:
    model = OnnxModel(tiny_model, "cpu", 1)
    with open_slide(assembled) as slide:
        plan, tissue = _small_blocks(slide, model)
        single = list(iter_tile_blocks(slide, plan, tissue))
        pooled = list(read_blocks(slide, plan, tissue, readers))
    assert len(single) > 8 * readers  # more blocks than the pool holds in flight
    assert len(pooled) == len(single)
    for one, many in zip(single, pooled, strict=True):
        np.testing.assert_array_equal(many.rows, one.rows)
        np.testing.assert_array_equal(many.cols, one.cols)
        np.testing.assert_array_equal(many.model_input, to_model_input(one.tiles, plan.spec))
    rows = np.concatenate([b.rows for b in pooled])
    cols = np.concatenate([b.cols for b in pooled])
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == int(tissue.sum())
    assert not _reader_threads()


def test_score_is_the_same_with_one_or_four_readers(tiny_model: Path) -> None:
    model = OnnxModel(tiny_model, "cpu", 1)
    with open_slide(SAMPLE_SVS) as slide:
        one = score_slide(slide, model, batch_size=7, readers=1)
        four = score_slide(slide, model, batch_size=7, readers=4)
    assert len(one.rows) > 7
    np.testing.assert_array_equal(four.rows, one.rows)
    np.testing.assert_array_equal(four.cols, one.cols)
    np.testing.assert_array_equal(four.probability, one.probability)
    np.testing.assert_array_equal(four.stain, one.stain)


@pytest.mark.parametrize("readers", [1, 3])
def test_cancel_stops_the_pool_within_a_region_per_thread(
    assembled: Path, tiny_model: Path, readers: int
) -> None:
    model = OnnxModel(tiny_model, "cpu", 1)
    with open_slide(assembled) as inner:
        slide = CountingSlide(inner)
        plan, tissue = _small_blocks(slide, model)
        asked = 0

        def stop_after_five() -> bool:
            nonlocal asked
            asked += 1
            return asked > 5

        slide.reads = 0
        with pytest.raises(Cancelled):
            for _ in read_blocks(slide, plan, tissue, readers, stop_after_five):
                pass
        # Five blocks handed out before the stop, none after it; those not started are dropped.
        assert 1 <= slide.reads <= 5
    assert not _reader_threads()


def test_cancelled_score_leaves_no_reader_running(tiny_model: Path) -> None:
    """Cancelled after its first batch, a job stops reading: fewer regions than a full run, and
    no reader thread outlives `score_slide`."""
    model = OnnxModel(tiny_model, "cpu", 1)
    with open_slide(SAMPLE_SVS) as inner:
        slide = CountingSlide(inner)
        score_slide(slide, model, batch_size=1, readers=1)
        full_run = slide.reads
        slide.reads = 0
        cancelled = threading.Event()

        def progress(done: int, _total: int) -> None:
            if done > 0:
                cancelled.set()

        with pytest.raises(Cancelled):
            score_slide(
                slide,
                model,
                batch_size=1,
                readers=4,
                on_progress=progress,
                should_stop=cancelled.is_set,
            )
    assert not _reader_threads()
    assert slide.reads < full_run


def test_a_reader_error_reaches_the_caller(assembled: Path, tiny_model: Path) -> None:
    model = OnnxModel(tiny_model, "cpu", 1)

    class Failing(CountingSlide):
        def read_region(
            self, location: tuple[int, int], level: int, size: tuple[int, int]
        ) -> np.ndarray:
            region = super().read_region(location, level, size)
            if self.reads > 3:
                raise OSError("the share went away")
            return region

    with open_slide(assembled) as inner:
        slide = Failing(inner)
        plan, tissue = _small_blocks(slide, model)
        with pytest.raises(OSError, match="share went away"):
            list(read_blocks(slide, plan, tissue, 2))
    assert not _reader_threads()


def test_uint8_model_scores_as_its_float_original(
    assembled: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """The same network, taking float32 (normalised in numpy) or uint8 (normalised in its graph):
    the worker feeds each what its contract says, and the probabilities agree."""
    converted = tmp_path / "tiny-uint8.onnx"
    convert_file(tiny_model, converted)
    old, new = OnnxModel(tiny_model, "cpu", 1), OnnxModel(converted, "cpu", 1)
    assert (old.spec.input_format, new.spec.input_format) == (FLOAT32_NCHW, UINT8_NHWC)
    with open_slide(assembled) as slide:
        before = score_slide(slide, old, batch_size=64, readers=2)
        after = score_slide(slide, new, batch_size=64, readers=2)
    np.testing.assert_array_equal(after.rows, before.rows)
    np.testing.assert_allclose(after.probability, before.probability, atol=1e-5)
    assert after.summary == before.summary


def test_a_flat_image_is_decoded_once_by_the_pool(tmp_path: Path, tiny_model: Path) -> None:
    """Flat images decode whole on their first read; reader threads starting together share
    that one decode instead of each making its own (192 MB at the flat-image limit)."""
    from PIL import Image

    from idcscan.core.slides import FLAT_IMAGE_MAX_PIXELS, ImageSlide

    class Counted(ImageSlide):
        decodes = 0

        def _decode(self) -> np.ndarray:
            Counted.decodes += 1
            time.sleep(0.05)  # long enough for every thread to ask for the pixels meanwhile
            return super()._decode()

    path = tmp_path / "tissue.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 200, (600, 800, 3), dtype=np.uint8)).save(path)
    model = OnnxModel(tiny_model, "cpu", 1)
    with open_slide(path, mpp=4.0) as first:
        plan = replace(plan_tiling(first, model.spec), block=2)
        tissue = find_tissue(first, plan).tissue
    slide = Counted(path, 4.0, FLAT_IMAGE_MAX_PIXELS)
    blocks = list(read_blocks(slide, plan, tissue, 4))
    assert Counted.decodes == 1
    assert sum(len(b.rows) for b in blocks) == int(tissue.sum()) == 12 * 16


# -- one pass: each block read once for the tissue mask and the tiles -------------------------


class LevelTwoPyramid(Slide):
    """The full-size benchmark slide's geometry, small: 0.25 um/px, downsamples 1, 4 and 16, the
    tissue mask and the tiles both read at level 2 in 20 x 20-tile blocks. Only level 2 holds
    pixels (`level2`); reading another level, or off its pixel grid, fails the test."""

    def __init__(self, level2: np.ndarray) -> None:
        self.format, self.mpp = "fake", 0.25
        self.level_downsamples = (1.0, 4.0, 16.0)
        height, width = level2.shape[:2]
        self.level_dimensions = tuple((width * 16 // d, height * 16 // d) for d in (1, 4, 16))
        self.level2 = level2

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        assert level == 2 and location[0] % 16 == 0 and location[1] % 16 == 0
        x, y = location[0] // 16, location[1] // 16
        region = np.full((size[1], size[0], 3), 255, np.uint8)
        inside = self.level2[y : y + size[1], x : x + size[0]]
        region[: inside.shape[0], : inside.shape[1]] = inside
        return region


def _stained_blobs(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Textured pink ellipses on white (some tiles partly covered), the top-right corner blank."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    shape = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(shape)
    for _ in range(12):
        x, y = rng.integers(0, width * 3 // 4), rng.integers(0, height)
        rx, ry = rng.integers(20, 160, size=2)
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=255)
    inside = np.asarray(shape) > 0
    pixels = np.full((height, width, 3), 255, np.uint8)
    texture = rng.integers(0, 90, (height, width, 1)) + np.array([150, 60, 140])
    pixels[inside] = texture.astype(np.uint8)[inside]
    return pixels


@pytest.fixture(scope="module")
def level_two_pyramid() -> LevelTwoPyramid:
    # 26 x 22 tiles: four blocks of up to 20 x 20, one of them without tissue.
    return LevelTwoPyramid(_stained_blobs(26 * 50, 22 * 50))


def _assert_same_score(one: SlideScore, two: SlideScore) -> None:
    assert one.single_pass and not two.single_pass
    assert one.tissue.level == two.tissue.level
    np.testing.assert_array_equal(one.tissue.fraction, two.tissue.fraction)
    np.testing.assert_array_equal(one.tissue.tissue, two.tissue.tissue)
    np.testing.assert_array_equal(one.tissue.thumbnail, two.tissue.thumbnail)
    np.testing.assert_array_equal(one.rows, two.rows)
    np.testing.assert_array_equal(one.cols, two.cols)
    np.testing.assert_array_equal(one.probability, two.probability)
    np.testing.assert_array_equal(one.stain, two.stain)
    assert one.summary == two.summary


@pytest.mark.parametrize("readers", [1, 3])
def test_one_pass_scores_as_two_on_the_benchmark_geometry(
    level_two_pyramid: LevelTwoPyramid, tiny_model: Path, readers: int
) -> None:
    model = OnnxModel(tiny_model, "cpu", 1)
    slide = level_two_pyramid
    one = score_slide(slide, model, batch_size=7, readers=readers)
    two = score_slide(slide, model, batch_size=7, readers=readers, single_pass=False)
    assert (one.plan.level, one.plan.block) == (2, 20)
    tissue = two.tissue.tissue
    assert 50 < tissue.sum() < tissue.size and not tissue[:20, 20:].any()
    _assert_same_score(one, two)


def test_one_pass_scores_as_two_on_the_sample_svs(tiny_model: Path) -> None:
    """A real slide read at level 0, its tiles 400.8 px: boxes cut on the block's pixels where
    they lie inside it, read again where rounding puts their edge a pixel beyond."""
    model = OnnxModel(tiny_model, "cpu", 1)
    with open_slide(SAMPLE_SVS) as slide:
        one = score_slide(slide, model, batch_size=5, readers=2)
        two = score_slide(slide, model, batch_size=5, readers=2, single_pass=False)
    assert len(one.rows) > 5
    _assert_same_score(one, two)


def test_one_pass_reads_each_block_once(
    level_two_pyramid: LevelTwoPyramid, tiny_model: Path
) -> None:
    model = OnnxModel(tiny_model, "cpu", 1)
    slide = CountingSlide(level_two_pyramid)
    score_slide(slide, model, single_pass=False)
    two_passes = slide.reads
    slide.reads = 0
    score = score_slide(slide, model)
    blocks = -(-score.plan.grid.rows // 20) * -(-score.plan.grid.cols // 20)
    assert slide.reads == blocks < two_passes


def test_a_mask_on_another_level_keeps_two_passes(assembled: Path, tiny_model: Path) -> None:
    """Patient 8916 reassembled: tiles at level 0 (4 um/px), the mask at level 2."""
    model = OnnxModel(tiny_model, "cpu", 1)
    with open_slide(assembled) as slide:
        plan = plan_tiling(slide, model.spec)
        assert single_pass_mask(slide, plan) is None
        assert not score_slide(slide, model).single_pass


@pytest.mark.parametrize("readers", [1, 3])
def test_cancel_stops_the_one_pass_within_a_region_per_thread(
    level_two_pyramid: LevelTwoPyramid, tiny_model: Path, readers: int
) -> None:
    model = OnnxModel(tiny_model, "cpu", 1)
    slide = CountingSlide(level_two_pyramid)
    plan = replace(plan_tiling(slide, model.spec), block=3)
    mask = single_pass_mask(slide, plan_tiling(slide, model.spec))
    assert mask is not None
    asked = 0

    def stop_after_five() -> bool:
        nonlocal asked
        asked += 1
        return asked > 5

    with pytest.raises(Cancelled):
        for _ in scan_blocks(slide, plan, replace(mask, block=3), readers, stop_after_five):
            pass
    assert 1 <= slide.reads <= 5
    assert not _reader_threads()


@pytest.mark.parametrize("single_pass", [True, False])
def test_progress_only_moves_forward_and_ends_at_the_total(
    level_two_pyramid: LevelTwoPyramid, tiny_model: Path, single_pass: bool
) -> None:
    calls: list[tuple[int, int]] = []
    score = score_slide(
        level_two_pyramid,
        OnnxModel(tiny_model, "cpu", 1),
        batch_size=7,
        on_progress=lambda done, total: calls.append((done, total)),
        single_pass=single_pass,
    )
    total = len(score.rows)
    grid = score.plan.grid.rows * score.plan.grid.cols
    assert calls[0] == (0, grid if single_pass else total)
    assert calls[-1] == (total, total) and calls.count((total, total)) == 1
    assert len(calls) >= total // 7
    for (done, bound), (next_done, next_bound) in itertools.pairwise(calls):
        assert done <= next_done <= next_bound <= bound


def test_a_cut_is_what_reading_the_box_gives_or_none(level_two_pyramid: LevelTwoPyramid) -> None:
    slide = level_two_pyramid
    region = Region(slide.read_region((1600, 800), 2, (300, 200)), (1600, 800), 16.0)
    cut = region.cut((1600 + 320, 800 + 160), (100, 40))
    assert cut is not None
    np.testing.assert_array_equal(cut, slide.read_region((1920, 960), 2, (100, 40)))
    assert region.cut((1608, 800), (10, 10)) is None  # off the level's pixel grid
    assert region.cut((1600 + 16 * 250, 800), (60, 10)) is None  # a column beyond the region
    assert region.cut((0, 800), (10, 10)) is None  # left of it


def test_boxes_that_cannot_be_cut_are_read_again(
    level_two_pyramid: LevelTwoPyramid, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = OnnxModel(tiny_model, "cpu", 1)
    slide = CountingSlide(level_two_pyramid)
    two = score_slide(slide, model, batch_size=7, single_pass=False)
    monkeypatch.setattr(Region, "cut", lambda *_: None)
    slide.reads = 0
    one = score_slide(slide, model, batch_size=7)
    blocks_with_tissue = len(list(tile_block_boxes(two.plan, two.tissue.tissue)))
    assert slide.reads == 4 + blocks_with_tissue
    _assert_same_score(one, two)
