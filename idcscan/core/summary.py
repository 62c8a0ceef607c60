"""The summary of one scored slide, typed once: built by the worker's pipeline, stored as a
`slide_results` row, served by the API and printed by `idcscan score`."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, fields
from typing import Any


class SlideCall(enum.StrEnum):
    """The slide-level call, by the model's own rule (its tile contract)."""

    IDC = "idc"
    NO_IDC = "no_idc"
    NO_TISSUE = "no_tissue"
    INDETERMINATE = "indeterminate"
    """The slide's stain lies outside the training data's (`in_distribution` false): its IDC
    figures are shown but not trusted enough for a call."""


@dataclass(frozen=True)
class SlideSummary:
    tissue_tiles: int
    idc_tiles: int
    idc_area_mm2: float
    idc_fraction: float
    max_probability: float | None
    mean_probability: float | None
    slide_call: SlideCall
    call_rule: str
    """The rule that made the call, in words (threshold and least IDC area)."""
    threshold: float
    level: int
    """Pyramid level read (0 = full resolution)."""
    level_mpp: float
    effective_mpp: float
    in_distribution: bool | None = True
    """False when the slide's stain lies outside the training data's (`core.stain`); true also
    when the model carries no stain reference to compare with; None for results stored before
    the check existed."""
    ood_reason: str | None = None
    """Why it is out of distribution, in words."""
    haematoxylin_od: float | None = None
    """Mean haematoxylin optical density of the tissue tiles (Ruifrok-Johnston deconvolution)."""
    haematoxylin_od_sd: float | None = None
    eosin_od: float | None = None
    eosin_od_sd: float | None = None
    far_tile_fraction: float | None = None
    """Share of tissue tiles outside the region holding 99% of the training tiles' stain."""
    stain_distance: float | None = None
    """Mahalanobis distance of the slide's mean stain from the training patients' means."""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (the call as its name)."""
        values = asdict(self)
        values["slide_call"] = self.slide_call.value
        return values

    def columns(self) -> dict[str, Any]:
        """The `slide_results` columns it fills (the same names)."""
        return self.as_dict()

    @classmethod
    def from_columns(cls, row: Any) -> SlideSummary:
        """Back from a stored `slide_results` row (any object with the fields as attributes)."""
        values = {name: getattr(row, name) for name in field_names()}
        values["slide_call"] = SlideCall(values["slide_call"])
        return cls(**values)


def field_names() -> tuple[str, ...]:
    """The summary's fields in order: the `slide_results` columns and the API's result schema
    (`idcscan.api.schemas`) follow them."""
    return tuple(field.name for field in fields(SlideSummary))
