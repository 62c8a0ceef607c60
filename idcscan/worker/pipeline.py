"""The scoring pipeline: one slide, one model -> per-tile probabilities and the slide's summary.

A pool of reader threads reads regions, cuts tiles and preprocesses them (`read_blocks`); one
thread assembles them into full batches while the calling thread runs onnxruntime (which releases
the GIL); bounded queues between them keep memory bounded whatever the slide's size. Where the
tissue mask reads the same regions as the tiles (the common case), the pool reads every block of
the grid once and the tissue map is put together from them on the way (`scan_blocks`): inference
starts with the first block instead of after a whole mask pass. A model that
takes uint8 tiles (`TileSpec.input_format`) gets them as cut: its normalisation runs in its graph. The queue worker (`tasks`) and `idcscan score` both call
`score_slide`; neither knows about the other. Ground truth is not read here: a caller that has
it evaluates the score afterwards (`evaluation`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from functools import cached_property, partial
from typing import Any, Protocol, TypeVar

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
    MaskPiece,
    MaskPlan,
    StopCheck,
    TileBlock,
    TilePlan,
    TissueMap,
    TissueMapBuilder,
    find_tissue,
    grid_blocks,
    plan_tiling,
    read_tile_block,
    scan_block,
    single_pass_mask,
    tile_block_boxes,
)

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
Item = TypeVar("Item")
Result = TypeVar("Result")

# Batches prepared ahead of inference; each is batch_size tiles of model input (1.9 MB at
# 256 x 50 x 50 uint8, 7.7 MB as float32).
PREFETCH_BATCHES = 3
# Blocks each reader thread may have read ahead of the batch being assembled.
BLOCKS_AHEAD_PER_READER = 2


@dataclass
class Batch:
    rows: np.ndarray
    cols: np.ndarray
    model_input: np.ndarray
    """What the model takes (`to_model_input`); axis 0 is the tile."""
    stain: np.ndarray
    """float32 (n, 4): each tile's H and E optical density and spread (`core.stain`)."""


def _batch_of(block: TileBlock, plan: TilePlan) -> Batch:
    """A block's tiles preprocessed, in a reader thread. The stain figures are taken here, beside
    the preprocessing: they cost no inference time."""
    return Batch(
        block.rows, block.cols, to_model_input(block.tiles, plan.spec), tile_features(block.tiles)
    )


def _prepare(slide: Slide, plan: TilePlan, tissue: np.ndarray, box: Box) -> Batch:
    return _batch_of(read_tile_block(slide, plan, tissue, box), plan)


@dataclass
class ScannedBlock:
    """One block of the grid, read once (the single pass): its share of the tissue map and its
    tissue tiles, prepared (None where it holds none)."""

    mask: MaskPiece
    batch: Batch | None


def _scan(slide: Slide, plan: TilePlan, mask: MaskPlan, box: Box) -> ScannedBlock:
    piece, tiles = scan_block(slide, plan, mask, box)
    return ScannedBlock(piece, None if tiles is None else _batch_of(tiles, plan))


def _pooled(
    work: Callable[[Item], Result],
    items: Iterable[Item],
    readers: int,
    should_stop: StopCheck | None,
) -> Generator[Result, None, None]:
    """`work(item)` for each item, in their order, run by `readers` threads.

    OpenSlide, Pillow and numpy release the GIL while they decode, resample and copy, so the
    threads read regions in parallel. At most `BLOCKS_AHEAD_PER_READER` items per thread are in
    flight (memory stays bounded); `should_stop` is asked before each item is handed out, and on
    the way out the items not yet started are cancelled: a cancelled job stops within one
    region read per thread."""
    in_flight: deque[Future[Result]] = deque()
    with ThreadPoolExecutor(readers, thread_name_prefix="idcscan-reader") as pool:
        try:
            for item in items:
                if should_stop is not None and should_stop():
                    raise Cancelled()
                in_flight.append(pool.submit(work, item))
                if len(in_flight) >= readers * BLOCKS_AHEAD_PER_READER:
                    yield in_flight.popleft().result()
            while in_flight:
                yield in_flight.popleft().result()
        finally:
            for future in in_flight:
                future.cancel()


def read_blocks(
    slide: Slide,
    plan: TilePlan,
    tissue: np.ndarray,
    readers: int,
    should_stop: StopCheck | None = None,
) -> Generator[Batch, None, None]:
    """The prepared tissue blocks of the slide in row-major order, read by `readers` threads
    (`_pooled`), after the tissue mask (two passes)."""
    prepare = partial(_prepare, slide, plan, tissue)
    return _pooled(prepare, tile_block_boxes(plan, tissue), readers, should_stop)


def scan_blocks(
    slide: Slide,
    plan: TilePlan,
    mask: MaskPlan,
    readers: int,
    should_stop: StopCheck | None = None,
) -> Generator[ScannedBlock, None, None]:
    """Every block of the grid in row-major order, each read once by one of `readers` threads
    (`_pooled`) for both its share of the tissue map and its prepared tissue tiles (one pass)."""
    blocks = grid_blocks(plan.grid.rows, plan.grid.cols, plan.block)
    return _pooled(partial(_scan, slide, plan, mask), blocks, readers, should_stop)


class _Passes(Protocol):
    """Where a scoring run's batches and tissue map come from."""

    blocks: Iterator[Batch]
    tiles_bound: int
    """The tissue tiles, or an upper bound on them while they are not known yet."""

    def tissue_map(self) -> TissueMap:
        """Complete once `blocks` is exhausted."""
        ...


class _TwoPasses:
    """The tissue mask read first, in this thread; then the tissue blocks, by the reader pool."""

    def __init__(
        self, slide: Slide, plan: TilePlan, readers: int, should_stop: StopCheck | None
    ) -> None:
        self._tissue = find_tissue(slide, plan, should_stop)
        self.tiles_bound = int(self._tissue.tissue.sum())
        self.blocks: Iterator[Batch] = read_blocks(
            slide, plan, self._tissue.tissue, readers, should_stop
        )

    def tissue_map(self) -> TissueMap:
        return self._tissue


class _OnePass:
    """Every block read once by the reader pool (`scan_blocks`); the tissue map is put together
    in the batch thread as the blocks go by. `tiles_bound` starts at every tile of the grid and
    falls as blocks are read (tissue tiles found plus every tile of the blocks not read yet): the
    tissue tiles are only known once the last block is in."""

    def __init__(
        self,
        slide: Slide,
        plan: TilePlan,
        mask: MaskPlan,
        readers: int,
        should_stop: StopCheck | None,
    ) -> None:
        self._builder = TissueMapBuilder(mask)
        self.tiles_bound = plan.grid.rows * plan.grid.cols
        self.blocks = self._batches(scan_blocks(slide, plan, mask, readers, should_stop))

    def _batches(self, scanned: Generator[ScannedBlock, None, None]) -> Iterator[Batch]:
        try:
            for block in scanned:
                self._builder.add(block.mask)
                _, _, nr, nc = block.mask.box
                found = 0 if block.batch is None else len(block.batch.rows)
                self.tiles_bound -= nr * nc - found  # one store: the scoring thread reads it
                if block.batch is not None:
                    yield block.batch
        finally:
            scanned.close()  # cancels the pool's blocks not yet started, now

    def tissue_map(self) -> TissueMap:
        return self._builder.result()


def _joined(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    return Batch(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Batch)))


def _split(batch: Batch, n: int) -> tuple[Batch, Batch]:
    """The first `n` tiles and the rest (views, no copy)."""
    head = Batch(*(getattr(batch, f.name)[:n] for f in fields(Batch)))
    return head, Batch(*(getattr(batch, f.name)[n:] for f in fields(Batch)))


def _batches(blocks: Iterator[Batch], batch_size: int) -> Iterator[Batch]:
    """Full batches (the last one partial) assembled from prepared blocks, in their order."""
    pending: list[Batch] = []
    count = 0
    try:
        for block in blocks:
            pending.append(block)
            count += len(block.rows)
            while count >= batch_size:
                batch, rest = _split(_joined(pending), batch_size)
                count -= batch_size
                pending = [rest] if count else []
                yield batch
        if count:
            yield _joined(pending)
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()


def timed(source: Iterator[Batch], seconds: dict[str, float], key: str) -> Iterator[Batch]:
    """`source`, adding the time spent producing each item to `seconds[key]` (in the reader's
    thread: the time it worked, not the time it waited on a full queue)."""
    seconds.setdefault(key, 0.0)
    items = iter(source)
    try:
        while True:
            start = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                seconds[key] += time.perf_counter() - start
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


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
        finally:
            # Closing the generators now (not whenever they are collected) cancels the reader
            # pool's blocks not yet started and waits for the ones being read.
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="idcscan-batches", daemon=True)
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
    """Where the time went: tissue_mask (before the first tile is read: the mask pass with two
    passes, planning only with one, where the readers build the mask inside `tiles`); tiles
    (reading and inference, overlapped); read (the batch thread's time producing batches: waiting
    on the reader pool, which reads, resamples, cuts and preprocesses regions (and, in a single
    pass, takes each block's share of the mask), and joining blocks into batches); inference
    (session.run); total. The worker adds open, outputs, database and cpu (`JobRunner.run`)."""
    single_pass: bool = False
    """Whether each block was read once for both the tissue mask and the tiles (`score_slide`)."""
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
        **stain.summary_fields(),
    )


def score_slide(
    slide: Slide,
    model: OnnxModel,
    *,
    batch_size: int = 256,
    readers: int = 2,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: StopCheck | None = None,
    single_pass: bool = True,
) -> SlideScore:
    """Score every tissue tile of `slide` with `model`. `readers`: threads reading the slide.

    `single_pass`: where the tissue mask would read the very regions the tiles are read from
    (`tiling.single_pass_mask`), read each once (`scan_blocks`); the result is the same as with
    two passes, the mask first (`find_tissue`) and then the tissue blocks (`read_blocks`), which
    other geometries take and False forces (the benchmarks' baseline).

    `on_progress(done, total)`: at the start and after each batch, tiles scored and tissue tiles
    in all. In a single pass the tissue tiles are known only once the last block is read: until
    then `total` is an upper bound that only falls (`_OnePass`); the last call is (total, total).

    Scoring only: the caller that has ground truth evaluates the score against it afterwards
    (`idcscan.worker.evaluation.evaluate`)."""
    started = time.perf_counter()
    plan = plan_tiling(slide, model.spec)
    mask = single_pass_mask(slide, plan) if single_pass else None
    passes: _Passes = (
        _TwoPasses(slide, plan, readers, should_stop)
        if mask is None
        else _OnePass(slide, plan, mask, readers, should_stop)
    )
    masked = time.perf_counter()
    capacity = passes.tiles_bound
    rows = np.empty(capacity, dtype=np.int32)
    cols = np.empty(capacity, dtype=np.int32)
    probability = np.empty(capacity, dtype=np.float32)
    stain = np.empty((capacity, len(STAIN_FEATURES)), dtype=np.float32)
    done = 0
    reported = (0, capacity)
    if on_progress:
        on_progress(*reported)
    inference = 0.0
    seconds: dict[str, float] = {}
    batches = timed(_batches(passes.blocks, batch_size), seconds, "read")
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
        reported = (done, passes.tiles_bound)
        if on_progress:
            on_progress(*reported)
    tissue = passes.tissue_map()
    total = int(tissue.tissue.sum())
    if done != total:
        raise RuntimeError(f"scored {done} tiles of {total}")
    if on_progress and reported != (total, total):
        on_progress(total, total)
    rows, cols, probability, stain = rows[:total], cols[:total], probability[:total], stain[:total]
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
        single_pass=mask is not None,
        seconds={
            **seconds,
            "tissue_mask": masked - started,
            "tiles": finished - masked,
            "inference": inference,
            "total": finished - started,
        },
    )
