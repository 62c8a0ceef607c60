"""Slide readers behind one interface: `open_slide(path_or_uri, mpp=None)` returns a `Slide`.

- OpenSlide for SVS, NDPI, SCN, BIF, Philips and generic tiled TIFF, CZI: the vendor formats that
  are one file. Formats whose file names other files (Hamamatsu VMS/VMU, MIRAX, DICOM) are read
  only on the command line, for a user's own files (`allow_multi_file`): a client's index could
  name any file on the host;
- Pillow for PNG, JPEG and flat TIFF (decoded whole, so they have a lower size limit);
- a folder or zip in the dataset's patch layout (`<patient>/<0|1>/*.png`), read as one slide with
  the patches placed at their X/Y and their labels carried as ground truth.

A file is identified by its content, never by its name. Opening a slide reads headers only and
checks every limit there (pixels, a pyramid level small enough to read whole, archive bytes); its
pixels are decoded on the first `read_region`, so the API can judge an upload without decoding
it. Errors are `InvalidInput` with fixed, cause-specific text: never a library's message, a path
or a name from inside the upload.

Every reader returns RGB uint8 regions on a white background and knows its pixel size: the job's
`mpp` when given, else the slide's metadata; with neither it is a clear `InvalidInput`.
"""

from __future__ import annotations

import io
import math
import shutil
import stat
import struct
import tempfile
import threading
import warnings
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from idcscan.core.errors import InvalidInput
from idcscan.core.labels import LabelledRect
from idcscan.core.patches import parse_patch_name
from idcscan.core.storage import as_local_file, is_local, local_path
from idcscan.core.tiles import BACKGROUND_VALUE, DATASET_MPP

# Flat images are decoded whole: 64 Mpx is 192 MB of RGB (and below Pillow's own bomb guard, so
# our limit, with our message, is the one that speaks). Bigger slides must be pyramidal.
FLAT_IMAGE_MAX_PIXELS = 64 * 1024 * 1024
# The flat formats Pillow may identify; its other plugins (EPS through Ghostscript, PSD, ...) are
# never offered a client's file.
FLAT_FORMATS = ("PNG", "JPEG", "TIFF")
# Every slide needs a level no larger than this, which the tissue mask can read whole: a slide
# declaring 200000 x 200000 px in 1.2 MB (absent tiles) with no pyramid held a worker for hours.
OVERVIEW_MAX_PIXELS = FLAT_IMAGE_MAX_PIXELS
# A recorded resolution outside this range is a default (72 dpi...), not a microscope's.
PLAUSIBLE_MPP = (0.05, 50.0)
# Vendor formats only OpenSlide reads; such a file that OpenSlide rejects is damaged. Judged by
# the file's own name, which for a stored upload is the suffix idcscan gave it (`storage_suffix`).
WHOLE_SLIDE_SUFFIXES = frozenset(
    {".svs", ".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".bif", ".svslide", ".czi"}
)
# OpenSlide vendors that read nothing but the file they are given. Not here: "mirax" (an index
# and a folder of data files), "dicom" (a series found by scanning the file's folder), "sakura"
# (an SQLite database: SQLite would run the schema a client wrote), "synthetic" (a test slide).
# "hamamatsu" is both NDPI, a TIFF, and VMS/VMU, text indexes naming JPEG files: TIFFs only.
SINGLE_FILE_VENDORS = frozenset(
    {"aperio", "generic-tiff", "hamamatsu", "leica", "philips", "trestle", "ventana", "zeiss"}
)
# The suffix a stored slide gets, from its detected format: never a character of the client's.
STORAGE_SUFFIX = {
    "aperio": ".svs",
    "generic-tiff": ".tiff",
    "hamamatsu": ".ndpi",
    "leica": ".scn",
    "philips": ".tiff",
    "trestle": ".tif",
    "ventana": ".bif",
    "zeiss": ".czi",
    "png": ".png",
    "jpeg": ".jpg",
    "tiff": ".tiff",
    "patch-layout": ".zip",
}
# Patch-layout zips, read against budgets of bytes really inflated (a dataset patch is a 50 x 50
# px PNG of a few kB, a patient a few thousand of them): zip bombs and zips that lie about their
# sizes cost at most these.
MAX_PATCH_BYTES = 1024**2
MAX_ARCHIVE_BYTES = 512 * 1024**2
# The zip's central directory is parsed into Python objects whole; 4 MB is some 40,000 members.
MAX_ARCHIVE_DIRECTORY_BYTES = 4 * 1024**2
INFLATE_CHUNK = 64 * 1024
# Enough of a PNG to read its header (the signature and IHDR are its first 33 bytes).
PNG_HEADER_BYTES = 64 * 1024

NOT_A_SLIDE = (
    "Not a slide or image idcscan reads (single-file OpenSlide formats, PNG, JPEG, TIFF, "
    "or a patch folder/zip)."
)
MULTI_FILE = (
    "This slide format names other files (Hamamatsu VMS/VMU, MIRAX, DICOM) or is a database "
    "(Sakura); send a single-file slide: SVS, NDPI, SCN, BIF, Philips or tiled TIFF, CZI."
)
DAMAGED_SLIDE = "The slide file is corrupt or truncated."
ARCHIVE_TOO_LARGE = (
    f"The archive inflates beyond its budget ({MAX_PATCH_BYTES} bytes per patch, "
    f"{MAX_ARCHIVE_BYTES} in all, a directory of {MAX_ARCHIVE_DIRECTORY_BYTES} bytes)."
)


def storage_suffix(slide_format: str) -> str:
    """The suffix a slide of `slide_format` (as `Slide.format` names it) is stored under."""
    return STORAGE_SUFFIX.get(slide_format, "")


class Slide(ABC):
    """A multi-resolution RGB image with a known pixel size at level 0."""

    format: str
    mpp: float
    """Micrometres per pixel at level 0."""
    level_dimensions: tuple[tuple[int, int], ...]
    """(width, height) of each level, level 0 first."""
    level_downsamples: tuple[float, ...]
    regions: tuple[LabelledRect, ...] | None = None
    """Ground truth carried by the slide itself (the patch layout), in level-0 pixels."""

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @abstractmethod
    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """RGB uint8 (h, w, 3) at `level`, top-left at `location` in level-0 pixels.

        Outside the slide (and where it is transparent) the region is white background.
        """

    def deepzoom_source(self) -> Any:
        """The slide as an `openslide.AbstractSlide`, which OpenSlide's DeepZoomGenerator tiles
        (the API's viewer). Here level 0 decoded whole, which suits the flat readers (at most
        `FLAT_IMAGE_MAX_PIXELS`); the OpenSlide reader hands over its own handle instead."""
        import openslide

        whole = self.read_region((0, 0), 0, self.dimensions)
        return openslide.ImageSlide(Image.fromarray(whole))

    def close(self) -> None:  # noqa: B027 - readers without resources need nothing
        pass

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _plausible_mpp(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value if PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1] else None


def _resolve_mpp(given: float | None, recorded: float | None, what: str) -> float:
    if given is not None:
        if not (given > 0 and math.isfinite(given)):
            raise InvalidInput(
                "The pixel size must be a positive number of um/px.", "bad-pixel-size"
            )
        return float(given)
    if recorded is None:
        raise InvalidInput(
            f"the {what} records no pixel size; give the job's mpp (micrometres per pixel)",
            "no-pixel-size",
        )
    return recorded


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidInput(f"the slide is empty ({width} x {height} px)", "empty-slide")
    if width * height > max_pixels:
        raise InvalidInput(
            f"the slide is {width} x {height} px, beyond the limit of {max_pixels} pixels",
            "slide-too-large",
        )


def _check_pyramid(level_dimensions: Sequence[tuple[int, int]]) -> None:
    """Some level must be small enough to read whole: the tissue mask's overview."""
    smallest = min(w * h for w, h in level_dimensions)
    if smallest > OVERVIEW_MAX_PIXELS:
        width, height = level_dimensions[0]
        raise InvalidInput(
            f"the slide is {width} x {height} px with no pyramid level of at most "
            f"{OVERVIEW_MAX_PIXELS} pixels; a slide this large must be pyramidal",
            "slide-too-large",
        )


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite an RGBA region over white background (OpenSlide's empty areas are transparent)."""
    alpha = rgba[..., 3]
    rgb = rgba[..., :3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + BACKGROUND_VALUE * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _crop_padded(image: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """A (h, w) window of `image` at (x, y), background where it falls outside."""
    out = np.full((h, w, 3), BACKGROUND_VALUE, dtype=np.uint8)
    ih, iw = image.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, iw), min(y + h, ih)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = image[y0:y1, x0:x1]
    return out


class OpenSlideSlide(Slide):
    def __init__(self, path: Path, vendor: str, mpp: float | None, max_pixels: int) -> None:
        import openslide

        self.format = vendor
        try:
            self._osr = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as exc:  # its message names the path: never passed on
            raise InvalidInput(DAMAGED_SLIDE, "truncated-slide") from exc
        try:
            self._error = openslide.OpenSlideError
            self.level_dimensions = tuple(self._osr.level_dimensions)
            self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
            _check_size(*self.dimensions, max_pixels)
            _check_pyramid(self.level_dimensions)
            props = self._osr.properties
            recorded = None
            try:
                mpp_x = float(props[openslide.PROPERTY_NAME_MPP_X])
                mpp_y = float(props[openslide.PROPERTY_NAME_MPP_Y])
                recorded = _plausible_mpp(math.sqrt(mpp_x * mpp_y))
            except (KeyError, ValueError):  # absent, or not a number (a vendor tag is free text)
                recorded = None
            self.mpp = _resolve_mpp(mpp, recorded, f"{self.format} slide")
        except BaseException:
            self._osr.close()
            raise

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        try:
            region = self._osr.read_region(location, level, size)
        except self._error as exc:
            raise InvalidInput(DAMAGED_SLIDE, "truncated-slide") from exc
        if region.getchannel("A").getextrema()[0] == 255:  # opaque: drop alpha in C
            return np.asarray(region.convert("RGB"))
        return _on_white(np.asarray(region))

    def deepzoom_source(self) -> Any:
        return self._osr

    def close(self) -> None:
        self._osr.close()


def _pillow_mpp(image: Image.Image) -> float | None:
    """Pixel size from TIFF resolution tags or a PNG/JPEG density, if plausible for a microscope."""
    try:
        tags = getattr(image, "tag_v2", None)
        if tags is not None and 282 in tags:  # XResolution
            unit = tags.get(296, 2)  # ResolutionUnit: 2 inch, 3 centimetre
            per_unit = float(tags[282])
            um_per_unit = {2: 25_400.0, 3: 10_000.0}.get(int(unit))
            if um_per_unit and per_unit > 0:
                return _plausible_mpp(um_per_unit / per_unit)
            return None
        dpi = image.info.get("dpi")
        if dpi and float(dpi[0]) > 0:
            return _plausible_mpp(25_400.0 / float(dpi[0]))
    except (TypeError, ValueError, IndexError, ZeroDivisionError, OverflowError):
        return None  # a tag of the wrong type or shape: no pixel size recorded
    return None


# What Pillow raises on a damaged file: its documented errors, and what its plugins raise on
# fields of the wrong shape (found by fuzzing). Each means a corrupt or truncated upload.
PILLOW_DAMAGE = (
    OSError,
    EOFError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    ZeroDivisionError,
    OverflowError,
    struct.error,
    UserWarning,
)


@contextmanager
def _pillow_verdicts() -> Iterator[None]:
    """Pillow's failures as `InvalidInput`: unidentified, a decompression bomb, damaged."""
    # Pillow reports damage (a truncated TIFF directory, corrupt EXIF) as warnings: errors here.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Our own limit is checked on the header and is lower; Pillow's warning adds nothing.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        except UnidentifiedImageError as exc:
            raise InvalidInput(NOT_A_SLIDE, "unsupported-format") from exc
        except Image.DecompressionBombError as exc:
            raise InvalidInput(
                f"the image declares more pixels than the limit of {FLAT_IMAGE_MAX_PIXELS} for "
                "flat images; a slide this large must be pyramidal",
                "slide-too-large",
            ) from exc
        except PILLOW_DAMAGE as exc:
            raise InvalidInput("The image is corrupt or truncated.", "truncated-slide") from exc


class ImageSlide(Slide):
    """A flat image read with Pillow: one level. Opening reads the header; the pixels are
    decoded whole on the first `read_region`."""

    def __init__(self, path: Path, mpp: float | None, max_pixels: int) -> None:
        self._path = path
        self._pixels: np.ndarray | None = None
        self._decoding = threading.Lock()  # the reader pool's threads decode it once
        with _pillow_verdicts(), Image.open(path, formats=FLAT_FORMATS) as image:
            self.format = str(image.format).lower()
            _check_size(image.width, image.height, min(max_pixels, FLAT_IMAGE_MAX_PIXELS))
            recorded = _pillow_mpp(image)
            self.level_dimensions = ((image.width, image.height),)
        self.level_downsamples = (1.0,)
        self.mpp = _resolve_mpp(mpp, recorded, f"{self.format} image")

    @property
    def pixels(self) -> np.ndarray:
        with self._decoding:
            if self._pixels is None:
                self._pixels = self._decode()
            return self._pixels

    def _decode(self) -> np.ndarray:
        with _pillow_verdicts(), Image.open(self._path, formats=FLAT_FORMATS) as image:
            if (image.width, image.height) != self.dimensions:  # replaced since opened
                raise InvalidInput("The image changed while it was read.", "truncated-slide")
            image.load()
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return np.asarray(rgb)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        if level != 0:
            raise ValueError("a flat image has only level 0")
        return _crop_padded(self.pixels, location[0], location[1], size[0], size[1])


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise InvalidInput("The archive holds a path outside its folder.", "unsafe-archive")
    return path


# What a damaged file or archive raises while it is read: each means a truncated or corrupt upload.
DAMAGED = (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError)

_END_OF_DIRECTORY = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"


def _archive_directory_size(path: Path) -> int:
    """The central directory's size from the zip's end record, found the way `zipfile` finds
    it, before `zipfile` reads the directory whole. ZIP64 archives are refused: a patient's
    patches never need one."""
    with open(path, "rb") as handle:
        handle.seek(0, io.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - (22 + 65_535)))
        tail = handle.read()
    if tail[-22:-18] == _END_OF_DIRECTORY and tail[-2:] == b"\x00\x00":
        at = len(tail) - 22
    else:
        at = tail.rfind(_END_OF_DIRECTORY)
        if at < 0 or len(tail) - at < 22:
            raise InvalidInput("The archive is damaged.", "truncated-slide")
    entries, directory_bytes = struct.unpack_from("<HI", tail, at + 10)
    zip64 = at >= 20 and tail[at - 20 : at - 16] == _ZIP64_LOCATOR
    if zip64 or entries == 0xFFFF or directory_bytes == 0xFFFFFFFF:
        raise InvalidInput(ARCHIVE_TOO_LARGE, "archive-too-large")
    return int(directory_bytes)


class _InflateBudget:
    """Bytes really inflated while reading an archive, against the per-patch and total budgets
    (never the sizes the archive claims: a member claiming 100 bytes may inflate to gigabytes)."""

    def __init__(self) -> None:
        self.total = 0

    def read(self, handle: Any, keep: int | None = None) -> bytes:
        """Read `handle` to its end in chunks, counting; returns its first `keep` bytes (all
        when None). Reading to the end is what checks a zip member's CRC."""
        kept = bytearray()
        size = 0
        while chunk := handle.read(INFLATE_CHUNK):
            size += len(chunk)
            self.total += len(chunk)
            if size > MAX_PATCH_BYTES or self.total > MAX_ARCHIVE_BYTES:
                raise InvalidInput(ARCHIVE_TOO_LARGE, "archive-too-large")
            room = len(chunk) if keep is None else keep - len(kept)
            if room > 0:
                kept += chunk[:room]
        return bytes(kept)


class PatchSlide(Slide):
    """The dataset's patch layout (a patient folder or a zip of one) read as one slide.

    Opening reads every patch through to its end against the inflation budgets (which checks
    each zip member's CRC) but keeps only its PNG header; the canvas is assembled on first read,
    its size bounded by the patches' coordinates and checked against the flat-image limit first.
    """

    format = "patch-layout"

    def __init__(self, source: Path, mpp: float | None, max_pixels: int) -> None:
        self._zip: zipfile.ZipFile | None = None
        try:
            self._index(source, mpp, max_pixels)
        except BaseException:
            self.close()
            raise

    def _open_archive(self, source: Path) -> list[str]:
        if _archive_directory_size(source) > MAX_ARCHIVE_DIRECTORY_BYTES:
            raise InvalidInput(ARCHIVE_TOO_LARGE, "archive-too-large")
        try:
            self._zip = zipfile.ZipFile(source)
        except (*DAMAGED, ValueError, struct.error) as exc:
            raise InvalidInput("The archive is damaged.", "truncated-slide") from exc
        claimed = 0
        names = []
        for info in self._zip.infolist():
            _safe_member(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise InvalidInput("The archive holds a link.", "unsafe-archive")
            if info.filename.lower().endswith(".png"):
                # The claims can only refuse early; reading counts what really inflates.
                claimed += info.file_size
                if info.file_size > MAX_PATCH_BYTES or claimed > MAX_ARCHIVE_BYTES:
                    raise InvalidInput(ARCHIVE_TOO_LARGE, "archive-too-large")
                names.append(info.filename)
        return names

    def _index(self, source: Path, mpp: float | None, max_pixels: int) -> None:
        entries: list[tuple[str, LabelledRect]] = []
        self._root: Path | None = None
        if source.is_dir():
            names = [str(p.relative_to(source).as_posix()) for p in sorted(source.rglob("*.png"))]
            self._root = source
        else:
            names = self._open_archive(source)
        patients = set()
        for name in sorted(names):
            parts = PurePosixPath(name).parts
            if len(parts) < 2 or parts[-2] not in ("0", "1"):
                continue
            try:
                patch = parse_patch_name(name)
            except ValueError as exc:
                raise InvalidInput(
                    "A patch is not named as in the dataset "
                    "(<patient>_idx5_x<X>_y<Y>_class<0|1>.png).",
                    "unsupported-format",
                ) from exc
            if str(patch.label) != parts[-2]:
                raise InvalidInput("A patch lies in a class folder its name contradicts.")
            patients.add(patch.patient)
            # The size is read from the PNG header below.
            entries.append((name, LabelledRect(patch.x, patch.y, 0, 0, patch.label)))
        if not entries:
            raise InvalidInput(
                "no patches in the dataset layout (<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png)",
                "unsupported-format",
            )
        if len(patients) > 1:
            raise InvalidInput(f"patches of {len(patients)} patients; one slide is one patient")
        budget = _InflateBudget()
        self._entries = [(name, self._sized(name, rect, budget)) for name, rect in entries]
        self.regions = tuple(rect for _, rect in self._entries)
        width = max(r.x + r.width for r in self.regions)
        height = max(r.y + r.height for r in self.regions)
        _check_size(width, height, min(max_pixels, FLAT_IMAGE_MAX_PIXELS))
        self.mpp = float(mpp) if mpp is not None else DATASET_MPP
        self.level_dimensions = ((width, height),)
        self.level_downsamples = (1.0,)
        self._canvas: np.ndarray | None = None
        self._decoding = threading.Lock()  # the reader pool's threads paint it once

    def _member_bytes(self, name: str, budget: _InflateBudget, keep: int | None = None) -> bytes:
        try:
            if self._zip is not None:
                with self._zip.open(name) as member:
                    return budget.read(member, keep)
            assert self._root is not None
            with open(self._root / name, "rb") as handle:
                return budget.read(handle, keep)
        except DAMAGED as exc:
            raise InvalidInput("A patch in the archive is damaged.", "truncated-slide") from exc

    def _sized(self, name: str, rect: LabelledRect, budget: _InflateBudget) -> LabelledRect:
        header = self._member_bytes(name, budget, keep=PNG_HEADER_BYTES)
        with _pillow_verdicts(), Image.open(io.BytesIO(header), formats=("PNG",)) as image:
            w, h = image.size
        return LabelledRect(rect.x, rect.y, w, h, rect.label)

    @property
    def canvas(self) -> np.ndarray:
        with self._decoding:
            if self._canvas is None:
                self._canvas = self._paint()
            return self._canvas

    def _paint(self) -> np.ndarray:
        width, height = self.dimensions
        canvas = np.full((height, width, 3), BACKGROUND_VALUE, dtype=np.uint8)
        budget = _InflateBudget()
        for name, rect in self._entries:
            data = self._member_bytes(name, budget)
            with _pillow_verdicts(), Image.open(io.BytesIO(data), formats=("PNG",)) as image:
                if image.size != (rect.width, rect.height):
                    raise InvalidInput("A patch changed while it was read.", "truncated-slide")
                canvas[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width] = np.asarray(
                    image.convert("RGB")
                )
        return canvas

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        if level != 0:
            raise ValueError("a patch-layout slide has only level 0")
        return _crop_padded(self.canvas, location[0], location[1], size[0], size[1])

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


class _DownloadedSlide(Slide):
    """A slide read from a temporary local copy of a remote URI, removed on close."""

    def __init__(self, inner: Slide, tmpdir: str) -> None:
        self._inner, self._tmpdir = inner, tmpdir
        self.format, self.mpp = inner.format, inner.mpp
        self.level_dimensions, self.level_downsamples = (
            inner.level_dimensions,
            inner.level_downsamples,
        )
        self.regions = inner.regions

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        return self._inner.read_region(location, level, size)

    def deepzoom_source(self) -> Any:
        return self._inner.deepzoom_source()

    def close(self) -> None:
        self._inner.close()
        shutil.rmtree(self._tmpdir, ignore_errors=True)


def _magic(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(4)


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# A zip starts with a member's local header (or, empty, with its end record).
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _vendor(path: Path) -> str | None:
    """OpenSlide's vendor for the file, from its content. Detection reads the file alone (a VMS
    index is parsed, the files it names are not opened)."""
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        return None
    return None if vendor is None else str(vendor)


def _open_local(path: Path, mpp: float | None, max_pixels: int, allow_multi_file: bool) -> Slide:
    if not path.exists():
        raise FileNotFoundError(f"no such slide: {path}")
    if path.is_dir():
        return PatchSlide(path, mpp, max_pixels)
    magic = _magic(path)
    if magic in ZIP_MAGIC:
        return PatchSlide(path, mpp, max_pixels)
    vendor = _vendor(path)
    if vendor is not None:
        one_file = vendor in SINGLE_FILE_VENDORS and (vendor != "hamamatsu" or magic in TIFF_MAGIC)
        if not (one_file or allow_multi_file):
            raise InvalidInput(MULTI_FILE, "unsupported-slide-format")
        return OpenSlideSlide(path, vendor, mpp, max_pixels)
    if magic in TIFF_MAGIC and path.suffix.lower() in WHOLE_SLIDE_SUFFIXES:
        # A vendor file OpenSlide cannot parse is damaged; Pillow might still decode a fragment
        # of it as a flat TIFF, which would score a partial slide as if it were whole.
        raise InvalidInput(DAMAGED_SLIDE, "truncated-slide")
    try:
        return ImageSlide(path, mpp, max_pixels)
    except InvalidInput as exc:
        if magic in TIFF_MAGIC and exc.code == "unsupported-format":
            # A TIFF header that neither OpenSlide nor Pillow can follow: a cut-off slide (an
            # SVS keeps its directories at the end).
            raise InvalidInput(DAMAGED_SLIDE, "truncated-slide") from exc
        raise


def open_slide(
    path_or_uri: str | Path,
    mpp: float | None = None,
    max_pixels: int = 250_000 * 250_000,
    *,
    allow_multi_file: bool = False,
) -> Slide:
    """Open a slide by path or fsspec URI; `mpp` (um/px) overrides the slide's recorded pixel size.

    `allow_multi_file` admits vendor formats whose file names other files (VMS/VMU, MIRAX,
    DICOM): only for a user's own local files on the command line, never for a file a client
    sent or named, and never for a remote URI (only the named file is downloaded).
    """
    uri = str(path_or_uri)
    if is_local(uri):
        return _open_local(local_path(uri), mpp, max_pixels, allow_multi_file)
    tmpdir = tempfile.mkdtemp(prefix="idcscan-slide-")
    try:
        target = Path(tmpdir) / PurePosixPath(uri).name
        with as_local_file(uri) as downloaded:
            shutil.move(str(downloaded), target)
        return _DownloadedSlide(_open_local(target, mpp, max_pixels, False), tmpdir)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise


def describe(slide: Slide) -> dict[str, Any]:
    """What a slide is, for logs and results; never its file name or vendor properties (PHI)."""
    return {
        "format": slide.format,
        "mpp": slide.mpp,
        "dimensions": list(slide.dimensions),
        "levels": len(slide.level_dimensions),
    }


__all__: Sequence[str] = [
    "ImageSlide",
    "OpenSlideSlide",
    "PatchSlide",
    "Slide",
    "describe",
    "open_slide",
    "storage_suffix",
]
