"""The scoring pipeline: one slide, one model -> per-tile probabilities and the slide's summary.

A reader thread reads regions, cuts tiles and preprocesses them into full batches while the
calling thread runs onnxruntime (which releases the GIL); a bounded queue between them keeps memory
bounded whatever the slide's size. The queue worker (`tasks`) and `idcscan score` both call
`score_slide`; neither knows about the other. Ground truth is not read here: a caller that has
it evaluates the score afterwards (`evaluation`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from idcscan.core.metrics import Confusion
from idcscan.core.onnxmodel import OnnxModel
from idcscan.core.slides import Slide
from idcscan.core.stain import FEATURES as STAIN_FEATURES
from idcscan.core.stain import StainCheck, check_slide, tile_features
from idcscan.core.summary import SlideCall, SlideSummary
from idcscan.core.tiles import to_model_input
from idcscan.worker.tiling import (
    Cancelled,
    StopCheck,
    TileBlock,
    TilePlan,
    TissueMap,
    find_tissue,
    iter_tile_blocks,
    plan_tiling,
)

log = logging.getLogger(__name__)

# Batches prepared ahead of inference; each is batch_size x 3 x H x W float32 (7.7 MB at 256x50x50).
PREFETCH_BATCHES = 3


@dataclass
class Batch:
    rows: np.ndarray
    cols: np.ndarray
    model_input: np.ndarray
    stain: np.ndarray
    """float32 (n, 4): each tile's H and E optical density and spread (`core.stain`)."""


def _batches(
    slide: Slide,
    plan: TilePlan,
    tissue: np.ndarray,
    batch_size: int,
    should_stop: StopCheck | None = None,
) -> Iterator[Batch]:
    """Full batches of preprocessed tiles (the last one partial), assembled across blocks."""
    pending: list[TileBlock] = []
    count = 0

    def flush(n: int) -> Batch:
        nonlocal pending, count
        rows = np.concatenate([b.rows for b in pending])
        cols = np.concatenate([b.cols for b in pending])
        tiles = (
            pending[0].tiles if len(pending) == 1 else np.concatenate([b.tiles for b in pending])
        )
        # The stain figures are taken here, in the reader thread, beside the preprocessing:
        # they cost no inference time.
        batch = Batch(
            rows[:n], cols[:n], to_model_input(tiles[:n], plan.spec), tile_features(tiles[:n])
        )
        rest = tiles[n:]
        pending = [TileBlock(rows=rows[n:], cols=cols[n:], tiles=rest)] if len(rest) else []
        count = len(rest)
        return batch

    for block in iter_tile_blocks(slide, plan, tissue, should_stop):
        pending.append(block)
        count += len(block.rows)
        while count >= batch_size:
            yield flush(batch_size)
    if count:
        yield flush(count)


def timed(source: Iterator[Batch], seconds: dict[str, float], key: str) -> Iterator[Batch]:
    """`source`, adding the time spent producing each item to `seconds[key]` (in the reader's
    thread: the time it worked, not the time it waited on a full queue)."""
    seconds.setdefault(key, 0.0)
    items = iter(source)
    while True:
        start = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            return
        finally:
            seconds[key] += time.perf_counter() - start
        yield item


_DONE = object()


def prefetch(source: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Run `source` in a thread, `depth` items ahead; its exceptions re-raise in the consumer."""
    items: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(_DONE)
        except BaseException as exc:
            items.put(exc)

    thread = threading.Thread(target=produce, name="idcscan-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get_nowait()
            except queue.Empty:
                thread.join(0.05)


@dataclass
class SlideScore:
    """Everything one scoring run produced, before it is stored anywhere."""

    plan: TilePlan
    tissue: TissueMap
    rows: np.ndarray
    cols: np.ndarray
    probability: np.ndarray
    summary: SlideSummary
    stain: np.ndarray | None = None
    """float32 (n, 4) per scored tile: `core.stain.tile_features` (NaN where too little stain)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Where the time went: tissue_mask; tiles (reading and inference, overlapped); read (the
    reader thread's work: regions read, resampled, cut, preprocessed); inference (session.run);
    total. The worker adds open, outputs, database and cpu (`JobRunner.run`)."""
    labels: np.ndarray | None = None
    model_variant: str = "fp32"
    """The model's precision that scored it (`core/variants.py`), recorded with the result."""
    """int8 per scored tile (-1 unlabelled), once evaluated against ground truth
    (`idcscan.worker.evaluation`)."""
    label_grid: np.ndarray | None = None
    confusion: Confusion | None = None

    @cached_property
    def origins(self) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 pixel x and y of each scored tile, computed once (database rows and CSV)."""
        return self.plan.grid.origins(self.rows, self.cols)

    @property
    def x(self) -> np.ndarray:
        return self.origins[0]

    @property
    def y(self) -> np.ndarray:
        return self.origins[1]

    def probability_grid(self) -> np.ndarray:
        """float32 (rows, cols), NaN where nothing was scored."""
        grid = np.full((self.plan.grid.rows, self.plan.grid.cols), np.nan, dtype=np.float32)
        grid[self.rows, self.cols] = self.probability
        return grid


def summarise(
    plan: TilePlan, probability: np.ndarray, stain: StainCheck | None = None
) -> SlideSummary:
    """The slide summary; the slide call follows the model's own rule (its tile contract), and is
    `indeterminate` where the slide's stain lies outside the training data's (`core.stain`)."""
    if stain is None:
        stain = check_slide(np.empty((0, len(STAIN_FEATURES)), dtype=np.float32), None)
    threshold = plan.spec.threshold
    min_area = plan.spec.slide_min_idc_mm2
    tissue_tiles = int(probability.size)
    idc_tiles = int(np.count_nonzero(probability >= threshold))
    idc_area = idc_tiles * plan.tile_area_mm2
    if tissue_tiles == 0:
        call = SlideCall.NO_TISSUE
    elif not stain.in_distribution:
        call = SlideCall.INDETERMINATE
    elif idc_tiles > 0 and idc_area >= min_area:
        call = SlideCall.IDC
    else:
        call = SlideCall.NO_IDC
    return SlideSummary(
        tissue_tiles=tissue_tiles,
        idc_tiles=idc_tiles,
        idc_area_mm2=idc_area,
        idc_fraction=idc_tiles / tissue_tiles if tissue_tiles else 0.0,
        max_probability=float(probability.max()) if tissue_tiles else None,
        mean_probability=float(probability.mean()) if tissue_tiles else None,
        slide_call=call,
        call_rule=(
            f"idc when at least {min_area:g} mm2 of tissue ({plan.spec.tile_um:g} um tiles) has "
            f"an IDC probability >= {threshold:g}; no_tissue when no tile holds tissue; "
            "indeterminate when its stain lies outside the training data's; else no_idc"
        ),
        threshold=threshold,
        level=plan.level,
        level_mpp=plan.level_mpp,
        effective_mpp=plan.effective_mpp,
        in_distribution=stain.in_distribution,
        ood_reason=stain.reason,
        haematoxylin_od=stain.haematoxylin_od,
        haematoxylin_od_sd=stain.haematoxylin_od_sd,
        eosin_od=stain.eosin_od,
        eosin_od_sd=stain.eosin_od_sd,
        far_tile_fraction=stain.far_tile_fraction,
        stain_distance=stain.stain_distance,
    )


def score_slide(
    slide: Slide,
    model: OnnxModel,
    *,
    batch_size: int = 256,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: StopCheck | None = None,
) -> SlideScore:
    """Score every tissue tile of `slide` with `model`; `on_progress(done, total)` after each batch.

    Scoring only: the caller that has ground truth evaluates the score against it afterwards
    (`idcscan.worker.evaluation.evaluate`)."""
    started = time.perf_counter()
    plan = plan_tiling(slide, model.spec)
    tissue = find_tissue(slide, plan, should_stop)
    total = int(tissue.tissue.sum())
    masked = time.perf_counter()
    if on_progress:
        on_progress(0, total)
    rows = np.empty(total, dtype=np.int32)
    cols = np.empty(total, dtype=np.int32)
    probability = np.empty(total, dtype=np.float32)
    stain = np.empty((total, len(STAIN_FEATURES)), dtype=np.float32)
    done = 0
    inference = 0.0
    seconds: dict[str, float] = {}
    batches = timed(_batches(slide, plan, tissue.tissue, batch_size, should_stop), seconds, "read")
    for batch in prefetch(batches, PREFETCH_BATCHES):
        if should_stop and should_stop():
            raise Cancelled()
        t0 = time.perf_counter()
        out = model.run(batch.model_input)
        inference += time.perf_counter() - t0
        n = len(out)
        rows[done : done + n], cols[done : done + n] = batch.rows, batch.cols
        probability[done : done + n] = out
        stain[done : done + n] = batch.stain
        done += n
        if on_progress:
            on_progress(done, total)
    if done != total:
        raise RuntimeError(f"scored {done} tiles of {total}")
    finished = time.perf_counter()
    return SlideScore(
        plan=plan,
        tissue=tissue,
        rows=rows,
        cols=cols,
        probability=probability,
        summary=summarise(plan, probability, check_slide(stain, model.manifest.stain)),
        stain=stain,
        model_variant=model.precision,
        seconds={
            **seconds,
            "tissue_mask": masked - started,
            "tiles": finished - masked,
            "inference": inference,
            "total": finished - started,
        },
    )
