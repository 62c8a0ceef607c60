"""Judge a slide before its job is accepted, with the very reader the worker uses, by its headers.

`idcscan.core.slides.open_slide` gives the same verdict here as in the worker, so what the worker
could never read is refused at once: not a slide, or a format whose file names other files (415);
no pixel size and no `mpp`, a slide over the pixel limit or without a pyramid level small enough
to read whole, an archive inflating beyond its budget, a truncated or damaged file (422). Opening
reads headers only (and a zip's patches through their byte budget): no image is decoded here, so
a small upload cannot cost the API the memory of its pixels. Damage deeper in the pixels is found
by the worker, which fails the job with the same cause.
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
    suffix: str
    """The suffix the slide is stored under, from its detected format (never the client's)."""


def probe_slide(path_or_uri: str | Path, mpp: float | None, max_pixels: int) -> SlideHeader:
    from idcscan.core.slides import open_slide, storage_suffix

    try:
        with open_slide(path_or_uri, mpp=mpp, max_pixels=max_pixels) as slide:
            width, height = slide.dimensions
            return SlideHeader(
                format=slide.format,
                width=width,
                height=height,
                mpp=slide.mpp,
                suffix=storage_suffix(slide.format),
            )
    except FileNotFoundError:
        raise InvalidInput("The slide_uri names no file.", "slide-not-found") from None
