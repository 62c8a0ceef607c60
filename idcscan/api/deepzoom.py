"""Deep zoom tiles of stored slides for the viewer: OpenSlide's DeepZoomGenerator over the slide
the worker scored, with an LRU of open slides per API process.

A viewer asks for dozens of tiles a second; opening a slide (parsing an SVS's directories, or
decoding a flat image or a patch zip whole) costs far more than reading one tile, so the last few
slides stay open. An evicted slide is only dropped from the cache, never closed here: a request
still reading a tile from it holds a reference, and the slide is closed once nothing does
(`weakref.finalize`; OpenSlide's handle closes itself the same way). The DZI uses the slide's own
level-0 pixels (`limit_bounds=False`), so the worker's tile coordinates place the overlay without
any offset.
"""

from __future__ import annotations

import io
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import openslide
from openslide.deepzoom import DeepZoomGenerator

from idcscan.core.slides import Slide, open_slide

TILE_SIZE = 254
OVERLAP = 1
"""OpenSeadragon's and OpenSlide's defaults: 254 + 2 x 1 px of overlap is a 256 px image."""
TILE_FORMAT = "jpeg"
JPEG_QUALITY = 80
OPEN_SLIDES = 8
"""Slides kept open per API process. A scanner slide costs little open; a flat image or patch
zip holds its decoded pixels (at most 192 MB), so the cache is kept short."""
TILE_CACHE_BYTES = 64 * 1024**2
"""Encoded tiles kept per API process (some 3,000 tiles of 20 kB). A tile of a low zoom level
is made from a large region of the slide (the whole slide, at the lowest levels of a slide with
one level), so it is worth keeping: every reader of the slide starts there."""


@dataclass
class DeepZoomSlide:
    """One open slide and its generator; `mpp` is the slide's pixel size at level 0."""

    slide: Slide
    generator: DeepZoomGenerator
    mpp: float
    shared_image: bool
    """Whether the source is one PIL image (openslide.ImageSlide, for flat slides), which tiles
    crop in turn: not thread-safe, unlike an OpenSlide handle, so only those take the lock."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.slide.dimensions

    def dzi(self) -> str:
        return str(self.generator.get_dzi(TILE_FORMAT))

    def tile(self, level: int, col: int, row: int) -> bytes | None:
        """The JPEG of one tile, or None for a tile the pyramid does not have."""
        if not 0 <= level < self.generator.level_count:
            return None
        cols, rows = self.generator.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            return None
        if self.shared_image:
            with self.lock:
                image = self.generator.get_tile(level, (col, row))
        else:
            image = self.generator.get_tile(level, (col, row))
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY)
        return out.getvalue()


def _open(uri: str, mpp: float | None) -> DeepZoomSlide:
    slide = open_slide(uri, mpp)
    try:
        source = slide.deepzoom_source()
        generator = DeepZoomGenerator(
            source, tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=False
        )
    except BaseException:
        slide.close()
        raise
    shared = not isinstance(source, openslide.OpenSlide)
    opened = DeepZoomSlide(slide, generator, slide.mpp, shared)
    weakref.finalize(opened, slide.close)
    return opened


TileKey = tuple[str, float | None, int, int, int]


class TileCache:
    """The most recently used encoded tiles, up to a budget of bytes. A stored slide never
    changes (it is named by its hash), so a tile never goes stale."""

    def __init__(self, budget: int = TILE_CACHE_BYTES) -> None:
        self.budget = budget
        self.size = 0
        self._tiles: OrderedDict[TileKey, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: TileKey) -> bytes | None:
        with self._lock:
            data = self._tiles.get(key)
            if data is not None:
                self._tiles.move_to_end(key)
            return data

    def put(self, key: TileKey, data: bytes) -> None:
        with self._lock:
            if key in self._tiles or len(data) > self.budget:
                return
            self._tiles[key] = data
            self.size += len(data)
            while self.size > self.budget:
                _key, dropped = self._tiles.popitem(last=False)
                self.size -= len(dropped)


class SlideCache:
    """The most recently used open slides, by stored URI and the job's pixel size, and the
    tiles made from them."""

    def __init__(self, size: int = OPEN_SLIDES, tile_bytes: int = TILE_CACHE_BYTES) -> None:
        self.size = size
        self._slides: OrderedDict[tuple[str, float | None], DeepZoomSlide] = OrderedDict()
        self._lock = threading.Lock()
        self.tiles = TileCache(tile_bytes)
        self.opened = 0
        """Slides opened so far (a measure of the cache's misses, for tests and benchmarks)."""

    def tile(self, uri: str, mpp: float | None, level: int, col: int, row: int) -> bytes | None:
        """One tile's JPEG, from the tile cache or made now; None where the pyramid has none."""
        key = (uri, mpp, level, col, row)
        if (hit := self.tiles.get(key)) is not None:
            return hit
        data = self.get(uri, mpp).tile(level, col, row)
        if data is not None:
            self.tiles.put(key, data)
        return data

    def get(self, uri: str, mpp: float | None) -> DeepZoomSlide:
        key = (uri, mpp)
        with self._lock:
            if (hit := self._slides.get(key)) is not None:
                self._slides.move_to_end(key)
                return hit
        # Opened outside the lock: one slow slide must not stall tiles of the others. Two
        # requests racing for a new slide may both open it; the second copy is dropped.
        opened = _open(uri, mpp)
        with self._lock:
            self.opened += 1
            kept = self._slides.setdefault(key, opened)
            self._slides.move_to_end(key)
            while len(self._slides) > self.size:
                self._slides.popitem(last=False)
        return kept
