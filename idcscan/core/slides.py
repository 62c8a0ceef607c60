"""Slide readers behind one interface: `open_slide(path_or_uri, mpp=None)` returns a `Slide`.

- OpenSlide for SVS, NDPI, MRXS, SCN, pyramidal (tiled) TIFF and everything else it reads;
- Pillow for PNG, JPEG and flat TIFF (decoded whole, so they have a lower size limit);
- a folder or zip in the dataset's patch layout (`<patient>/<0|1>/*.png`), read as one slide with
  the patches placed at their X/Y and their labels carried as ground truth.

Every reader returns RGB uint8 regions on a white background and knows its pixel size: the job's
`mpp` when given, else the slide's metadata; with neither it is a clear `InvalidInput`.
"""

from __future__ import annotations

import io
import math
import shutil
import stat
import tempfile
import warnings
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
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

# Flat images are decoded whole: 256 Mpx is 768 MB of RGB. Bigger slides must be pyramidal.
FLAT_IMAGE_MAX_PIXELS = 256 * 1024 * 1024
# A recorded resolution outside this range is a default (72 dpi...), not a microscope's.
PLAUSIBLE_MPP = (0.05, 50.0)
# Vendor formats only OpenSlide reads; such a file that OpenSlide rejects is damaged.
WHOLE_SLIDE_SUFFIXES = frozenset(
    {".svs", ".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".bif", ".svslide"}
)
# Zip members in total may not inflate beyond this (a zip bomb guard; the dataset's largest
# patient is a few MB).
MAX_ARCHIVE_BYTES = 2 * 1024**3


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
                f"pixel size must be a positive number of um/px, got {given}", "bad-pixel-size"
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
    def __init__(self, path: Path, mpp: float | None, max_pixels: int) -> None:
        import openslide

        try:
            self._osr = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as exc:
            raise InvalidInput(
                f"the slide file is corrupt or truncated: {exc}", "truncated-slide"
            ) from exc
        self._error = openslide.OpenSlideError
        self.format = str(openslide.OpenSlide.detect_format(str(path)))
        self.level_dimensions = tuple(self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        _check_size(*self.dimensions, max_pixels)
        props = self._osr.properties
        recorded = None
        if openslide.PROPERTY_NAME_MPP_X in props and openslide.PROPERTY_NAME_MPP_Y in props:
            mpp_x = float(props[openslide.PROPERTY_NAME_MPP_X])
            mpp_y = float(props[openslide.PROPERTY_NAME_MPP_Y])
            recorded = _plausible_mpp(math.sqrt(mpp_x * mpp_y))
        self.mpp = _resolve_mpp(mpp, recorded, f"{self.format} slide")

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        try:
            region = self._osr.read_region(location, level, size)
        except self._error as exc:
            raise InvalidInput(
                f"the slide could not be decoded (corrupt or truncated): {exc}", "truncated-slide"
            ) from exc
        if region.getchannel("A").getextrema()[0] == 255:  # opaque: drop alpha in C
            return np.asarray(region.convert("RGB"))
        return _on_white(np.asarray(region))

    def close(self) -> None:
        self._osr.close()


def _pillow_mpp(image: Image.Image) -> float | None:
    """Pixel size from TIFF resolution tags or a PNG/JPEG density, if plausible for a microscope."""
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
    return None


class ImageSlide(Slide):
    """A flat image decoded whole with Pillow: one level."""

    def __init__(self, path: Path, mpp: float | None, max_pixels: int) -> None:
        # Pillow reports damage (a truncated TIFF directory, corrupt EXIF) as warnings: errors here.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # The size is checked against our own limit first; Pillow's bomb warning is redundant.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                image = Image.open(path)
            except UnidentifiedImageError as exc:
                raise InvalidInput(
                    "not a slide or image idcscan reads (OpenSlide formats, PNG, JPEG, TIFF, "
                    "or a patch folder/zip)",
                    "unsupported-format",
                ) from exc
            except (OSError, SyntaxError, ValueError, UserWarning) as exc:
                raise InvalidInput(
                    f"the image is corrupt or truncated: {exc}", "truncated-slide"
                ) from exc
            with image:
                self.format = str(image.format).lower()
                _check_size(image.width, image.height, min(max_pixels, FLAT_IMAGE_MAX_PIXELS))
                recorded = _pillow_mpp(image)
                # Decode before judging the metadata: a damaged file is reported as damaged.
                try:
                    self._pixels = np.asarray(image.convert("RGB"))
                except (OSError, SyntaxError, ValueError, UserWarning) as exc:
                    raise InvalidInput(
                        f"the image could not be decoded (corrupt or truncated): {exc}",
                        "truncated-slide",
                    ) from exc
                self.mpp = _resolve_mpp(mpp, recorded, f"{self.format} image")
        h, w = self._pixels.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        if level != 0:
            raise ValueError("a flat image has only level 0")
        return _crop_padded(self._pixels, location[0], location[1], size[0], size[1])


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise InvalidInput(
            f"the archive holds a path outside its folder: {name!r}", "unsafe-archive"
        )
    return path


# What a damaged file or archive raises while it is read: each means a truncated or corrupt upload.
DAMAGED = (OSError, EOFError, zipfile.BadZipFile, zlib.error)


class PatchSlide(Slide):
    """The dataset's patch layout (a patient folder or a zip of one) read as one slide.

    The canvas is assembled on first read; its size is bounded by the patches' coordinates and
    checked against the flat-image limit before any pixel is decoded.
    """

    format = "patch-layout"

    def __init__(self, source: Path, mpp: float | None, max_pixels: int) -> None:
        self._zip: zipfile.ZipFile | None = None
        try:
            self._index(source, mpp, max_pixels)
        except BaseException:
            self.close()
            raise

    def _index(self, source: Path, mpp: float | None, max_pixels: int) -> None:
        entries: list[tuple[str, LabelledRect]] = []
        if source.is_dir():
            names = [str(p.relative_to(source).as_posix()) for p in sorted(source.rglob("*.png"))]
            self._root: Path | None = source
        else:
            try:
                self._zip = zipfile.ZipFile(source)
            except DAMAGED as exc:
                raise InvalidInput(f"the archive is damaged: {exc}", "truncated-slide") from exc
            self._root = None
            total = 0
            names = []
            for info in self._zip.infolist():
                _safe_member(info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise InvalidInput(
                        f"the archive holds a link: {info.filename!r}", "unsafe-archive"
                    )
                total += info.file_size
                if info.filename.lower().endswith(".png"):
                    names.append(info.filename)
            if total > MAX_ARCHIVE_BYTES:
                raise InvalidInput("the archive inflates beyond its size limit", "slide-too-large")
        patients = set()
        for name in sorted(names):
            parts = PurePosixPath(name).parts
            if len(parts) < 2 or parts[-2] not in ("0", "1"):
                continue
            try:
                patch = parse_patch_name(name)
            except ValueError as exc:
                raise InvalidInput(str(exc), "unsupported-format") from exc
            if str(patch.label) != parts[-2]:
                raise InvalidInput(
                    f"{parts[-1]} lies in {parts[-2]}/ but is labelled {patch.label}"
                )
            patients.add(patch.patient)
            # The size is read from the PNG header below, when the canvas is built.
            entries.append((name, LabelledRect(patch.x, patch.y, 0, 0, patch.label)))
        if not entries:
            raise InvalidInput(
                "no patches in the dataset layout (<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png)",
                "unsupported-format",
            )
        if len(patients) > 1:
            raise InvalidInput(f"patches of {len(patients)} patients; one slide is one patient")
        self._entries = [(name, self._sized(name, rect)) for name, rect in entries]
        self.regions = tuple(rect for _, rect in self._entries)
        width = max(r.x + r.width for r in self.regions)
        height = max(r.y + r.height for r in self.regions)
        _check_size(width, height, min(max_pixels, FLAT_IMAGE_MAX_PIXELS))
        self.mpp = float(mpp) if mpp is not None else DATASET_MPP
        self.level_dimensions = ((width, height),)
        self.level_downsamples = (1.0,)
        self._canvas: np.ndarray | None = None

    def _open_member(self, name: str) -> Image.Image:
        if self._zip is not None:
            # Patches are a few kB: read whole (which checks the CRC), so no member stays open.
            return Image.open(io.BytesIO(self._zip.read(name)))
        assert self._root is not None
        return Image.open(self._root / name)

    def _sized(self, name: str, rect: LabelledRect) -> LabelledRect:
        try:
            with self._open_member(name) as image:
                w, h = image.size
        except UnidentifiedImageError as exc:
            raise InvalidInput(f"patch {name!r} is not a PNG: {exc}", "unsupported-format") from exc
        except DAMAGED as exc:
            raise InvalidInput(f"patch {name!r} is damaged: {exc}", "truncated-slide") from exc
        return LabelledRect(rect.x, rect.y, w, h, rect.label)

    @property
    def canvas(self) -> np.ndarray:
        if self._canvas is None:
            width, height = self.dimensions
            canvas = np.full((height, width, 3), BACKGROUND_VALUE, dtype=np.uint8)
            for name, rect in self._entries:
                try:
                    with self._open_member(name) as image:
                        canvas[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width] = (
                            np.asarray(image.convert("RGB"))
                        )
                except DAMAGED as exc:
                    raise InvalidInput(
                        f"patch {name!r} could not be decoded: {exc}", "truncated-slide"
                    ) from exc
            self._canvas = canvas
        return self._canvas

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

    def close(self) -> None:
        self._inner.close()
        shutil.rmtree(self._tmpdir, ignore_errors=True)


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _open_local(path: Path, mpp: float | None, max_pixels: int) -> Slide:
    import openslide

    if not path.exists():
        raise FileNotFoundError(f"no such slide: {path}")
    if path.is_dir() or zipfile.is_zipfile(path):
        return PatchSlide(path, mpp, max_pixels)
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        vendor = None
    if vendor is not None:
        return OpenSlideSlide(path, mpp, max_pixels)
    if path.suffix.lower() in WHOLE_SLIDE_SUFFIXES and _is_tiff(path):
        # A vendor file OpenSlide cannot parse is damaged; Pillow might still decode a fragment
        # of it as a flat TIFF, which would score a partial slide as if it were whole.
        raise InvalidInput(
            f"the {path.suffix.lower()} file is not a readable slide (corrupt or truncated)",
            "truncated-slide",
        )
    return ImageSlide(path, mpp, max_pixels)


def open_slide(
    path_or_uri: str | Path, mpp: float | None = None, max_pixels: int = 250_000 * 250_000
) -> Slide:
    """Open a slide by path or fsspec URI; `mpp` (um/px) overrides the slide's recorded pixel size."""
    uri = str(path_or_uri)
    if is_local(uri):
        return _open_local(local_path(uri), mpp, max_pixels)
    tmpdir = tempfile.mkdtemp(prefix="idcscan-slide-")
    try:
        target = Path(tmpdir) / PurePosixPath(uri).name
        with as_local_file(uri) as downloaded:
            shutil.move(str(downloaded), target)
        return _DownloadedSlide(_open_local(target, mpp, max_pixels), tmpdir)
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
]
