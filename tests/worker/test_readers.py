"""The reader pool: every tissue tile once, in the single reader's order, whatever the number of
threads; a cancelled job stops reading within a region per thread and leaves no thread behind;
uint8-input models score as their float32 originals. Real slides (an OpenSlide pyramidal TIFF,
an SVS), real onnxruntime."""

from __future__ import annotations

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
from idcscan.worker.pipeline import read_blocks, score_slide
from idcscan.worker.tiling import (
    Cancelled,
    TilePlan,
    find_tissue,
    iter_tile_blocks,
    plan_tiling,
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
