"""Read a slide before its job is accepted, with the very reader the worker uses.

`idcscan.core.slides.open_slide` gives the same verdict here as in the worker, so what the worker
could never read is refused at once: not a slide (415), no pixel size and no `mpp`, a slide over
the pixel limit, a truncated or damaged file (422). OpenSlide formats are read header-only; flat
images (PNG, JPEG, flat TIFF; at most 256 Mpx) are decoded once, which is how damage shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from idcscan.core.errors import InvalidInput


@dataclass(frozen=True)
class SlideHeader:
    format: str
    width: int
    height: int
    mpp: float
    """The pixel size the job will be scored at: the job's `mpp`, else the slide's own."""


def probe_slide(path_or_uri: str | Path, mpp: float | None, max_pixels: int) -> SlideHeader:
    from idcscan.core.slides import open_slide

    try:
        with open_slide(path_or_uri, mpp=mpp, max_pixels=max_pixels) as slide:
            width, height = slide.dimensions
            return SlideHeader(format=slide.format, width=width, height=height, mpp=slide.mpp)
    except FileNotFoundError:
        raise InvalidInput("The slide_uri names no file.", "slide-not-found") from None
