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
