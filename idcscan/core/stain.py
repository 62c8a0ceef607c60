"""How far a slide's stain lies from the training data's: the out-of-distribution check.

Each tissue tile is reduced to four numbers by a fixed Ruifrok-Johnston colour deconvolution
(Ruifrok & Johnston 2001, the H&E-DAB vectors scikit-image also uses): the mean haematoxylin and
eosin optical densities of its stained pixels, and their spread (standard deviation) inside the
tile. A slide is compared with the training patients in two ways:

- its *stain distance*: how far its mean within-tile spread of H and E (nuclear and stromal
  texture at the model's scale) lies from the training patients' (Mahalanobis);
- its *far-tile share*: the share of its tiles outside the region holding 99% of the training
  tiles (Mahalanobis over all four numbers).

Measured on the 234 patients of the dataset, the mean densities alone do not tell the two
non-breast sample slides from breast: this single-centre dataset spans a wide range of staining,
and those slides are ordinary H&E. The spread does (models/MODEL_CARD.md has the figures). The
limits come from the training patients (`reference_from_patients`) and travel in the model's
ONNX metadata (`METADATA_KEY`), beside the tile contract: the worker reads them with the model.

Cheap by design: a 256-entry lookup table and one small matrix product per pixel, numpy only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

METADATA_KEY = "idcscan.stain_reference"

# Ruifrok & Johnston's stain vectors (optical density per RGB channel), normalised to unit length:
# haematoxylin, eosin, and DAB as the third (residual) channel of an H&E slide.
STAIN_VECTORS = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
STAIN_VECTORS /= np.linalg.norm(STAIN_VECTORS, axis=1, keepdims=True)
_UNMIX = np.linalg.inv(STAIN_VECTORS).astype(np.float32)
"""Optical densities (row vector) @ _UNMIX = stain concentrations (H, E, residual)."""
_UNMIX_AND_SUM = np.concatenate([_UNMIX[:, :2], np.ones((3, 1), dtype=np.float32)], axis=1)
"""Optical densities @ this = (H, E, summed density)."""

# Optical density of each uint8 intensity, relative to a white (255) background.
_OD = (-np.log10(np.maximum(np.arange(256), 1) / 255.0)).astype(np.float32)

STAINED_MIN_OD = 0.3
"""A pixel counts as stained when its optical densities sum to at least this (white is 0; a
pale pink (220, 175, 210) is 0.31): background and glass do not dilute the figures."""
STAINED_MIN_PIXELS = 0.05
"""A tile whose stained pixels are fewer than this share carries no stain figure (NaN)."""
TILE_QUANTILE = 0.99
"""Share of the training tiles inside the far-tile radius."""
MARGIN = 1.05
"""Each slide limit is this many times the largest value any training patient reached: every
training patient passes. Small, because the figures leave little room (models/MODEL_CARD.md)."""

PIXEL_STEP = 2
"""Every second pixel of every second row: a quarter of the pixels (625 of a 50 px tile) gives
nearly the same means and spreads (the shipped limit moved from 3.98 to 4.00) at a quarter of
the cost."""

MIN_PATIENTS = 3
"""Fewer patients give no covariance of their means to measure a distance with."""

FEATURES = ("haematoxylin_od", "eosin_od", "haematoxylin_od_sd", "eosin_od_sd")
SPREAD = [2, 3]
"""The features whose slide means make the stain distance: the within-tile spreads."""

Matrix = tuple[tuple[float, ...], ...]


def tile_features(tiles: np.ndarray) -> np.ndarray:
    """float32 (N, 4): per uint8 RGB tile, the mean haematoxylin and eosin optical density of its
    stained pixels and their standard deviations inside the tile (`FEATURES`); NaN for a tile
    with too few stained pixels."""
    if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"expected uint8 tiles (N, H, W, 3), got {tiles.dtype} {tiles.shape}")
    n = len(tiles)
    od = _OD[tiles[:, ::PIXEL_STEP, ::PIXEL_STEP].reshape(n, -1, 3)]
    # One product gives H, E and the summed density that tells stained pixels from glass.
    density = od @ _UNMIX_AND_SUM
    stained = (density[..., 2] >= STAINED_MIN_OD).astype(np.float32)
    counts = stained.sum(axis=1)
    weights = (stained / np.maximum(counts, 1)[:, None])[:, None, :]
    he = density[..., :2]
    mean = np.matmul(weights, he)[:, 0]
    variance = np.matmul(weights, he * he)[:, 0] - mean * mean
    features = np.concatenate([mean, np.sqrt(np.maximum(variance, 0.0))], axis=1)
    features[counts < STAINED_MIN_PIXELS * od.shape[1]] = np.nan
    return features.astype(np.float32)


def _matrix(values: np.ndarray) -> Matrix:
    return tuple(tuple(float(v) for v in row) for row in np.atleast_2d(values))


@dataclass(frozen=True)
class StainReference:
    """The training data's stain, and the limits a slide must stay within."""

    tile_mean: tuple[float, ...]
    tile_inverse_covariance: Matrix
    far_radius: float
    """Mahalanobis distance holding `TILE_QUANTILE` of the training tiles."""
    max_far_tile_fraction: float
    """A slide with a larger share of far tiles is out of distribution."""
    spread_mean: tuple[float, ...]
    """The training patients' mean within-tile spread of H and E, averaged over patients."""
    spread_inverse_covariance: Matrix
    max_stain_distance: float
    """A slide whose mean spread lies farther than this from the training patients' is out of
    distribution."""
    training: dict[str, Any]
    """What it was computed from and the training patients' own figures (largest, percentiles)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StainReference:
        raw: dict[str, Any] = json.loads(text)
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown stain reference fields: {sorted(unknown)}")
        for name in ("tile_inverse_covariance", "spread_inverse_covariance"):
            raw[name] = _matrix(np.asarray(raw[name]))
        for name in ("tile_mean", "spread_mean"):
            raw[name] = tuple(raw[name])
        return cls(**raw)

    def to_metadata(self) -> dict[str, str]:
        return {METADATA_KEY: self.to_json()}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> StainReference | None:
        """The reference an ONNX file carries; None for a model exported without one."""
        text = metadata.get(METADATA_KEY)
        return cls.from_json(text) if text else None


def _distance(points: np.ndarray, mean: Any, inverse_covariance: Any) -> np.ndarray:
    delta = np.asarray(points, dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    inverse = np.asarray(inverse_covariance, dtype=np.float64)
    return np.sqrt(np.einsum("ni,ij,nj->n", delta, inverse, delta))


@dataclass(frozen=True)
class StainCheck:
    """A slide's stain figures and the verdict against a reference."""

    in_distribution: bool
    reason: str | None
    """Why it is out of distribution, in words; None when it is in."""
    haematoxylin_od: float | None = None
    """Mean over tiles of the tile's mean haematoxylin optical density."""
    haematoxylin_od_sd: float | None = None
    """Mean over tiles of the haematoxylin density's spread (sd) inside the tile."""
    eosin_od: float | None = None
    eosin_od_sd: float | None = None
    far_tile_fraction: float | None = None
    """Share of its stained tissue tiles outside the training tiles' 99% region."""
    stain_distance: float | None = None
    """Mahalanobis distance of its mean H and E spread from the training patients'."""

    def summary_fields(self) -> dict[str, Any]:
        """The `SlideSummary` fields it fills (the same names; its reason is `ood_reason`)."""
        values = asdict(self)
        values["ood_reason"] = values.pop("reason")
        return values


def slide_figures(features: np.ndarray, reference: StainReference) -> dict[str, float]:
    """A slide's stain figures from its tiles' `tile_features` (at least one measured tile)."""
    known = features[~np.isnan(features).any(axis=1)]
    mean = known.mean(axis=0)
    far = _distance(known, reference.tile_mean, reference.tile_inverse_covariance)
    distance = _distance(
        mean[None, SPREAD], reference.spread_mean, reference.spread_inverse_covariance
    )
    return {
        **{name: float(value) for name, value in zip(FEATURES, mean, strict=True)},
        "far_tile_fraction": float(np.mean(far > reference.far_radius)),
        "stain_distance": float(distance[0]),
    }


def check_slide(features: np.ndarray, reference: StainReference | None) -> StainCheck:
    """The verdict on a slide's tile features (`tile_features` of its tissue tiles).

    In distribution when the model carries no reference (nothing to compare with) or no tile is
    stained enough to measure (the slide call says `no_tissue` or rests on the tiles alone)."""
    if reference is None or not (~np.isnan(features).any(axis=1)).any():
        return StainCheck(True, None)
    figures = slide_figures(features, reference)
    reasons = []
    if figures["stain_distance"] > reference.max_stain_distance:
        reasons.append(
            "the spread of its H&E optical densities inside tiles "
            f"(H {figures['haematoxylin_od_sd']:.3f}, E {figures['eosin_od_sd']:.3f}) lies "
            f"{figures['stain_distance']:.2f} from the training patients' "
            f"(limit {reference.max_stain_distance:.2f})"
        )
    if figures["far_tile_fraction"] > reference.max_far_tile_fraction:
        reasons.append(
            f"{figures['far_tile_fraction']:.0%} of its tissue tiles lie outside the training "
            f"tiles' stain (limit {reference.max_far_tile_fraction:.0%})"
        )
    return StainCheck(not reasons, "; ".join(reasons) or None, **figures)


def _inverse_covariance(points: np.ndarray) -> Matrix:
    return _matrix(np.linalg.inv(np.cov(points, rowvar=False)))


def reference_from_patients(features: Mapping[str, np.ndarray]) -> StainReference:
    """The reference of the training patients' tile features (patient id -> `tile_features`).

    Each slide limit is `MARGIN` times the largest value any training patient reached, so every
    training patient passes by construction; whether unlike slides are caught is measured on
    them (models/MODEL_CARD.md)."""
    measured = {p: f[~np.isnan(f).any(axis=1)] for p, f in features.items()}
    measured = {p: f for p, f in measured.items() if len(f)}
    if len(measured) < MIN_PATIENTS:
        raise ValueError(
            f"a stain reference needs at least {MIN_PATIENTS} patients with stained tiles"
        )
    tiles = np.concatenate(list(measured.values()))
    tile_mean = tiles.mean(axis=0)
    tile_inverse = _inverse_covariance(tiles)
    radius = float(np.quantile(_distance(tiles, tile_mean, tile_inverse), TILE_QUANTILE))
    spreads = np.stack([f[:, SPREAD].mean(axis=0) for f in measured.values()])
    unlimited = StainReference(
        tile_mean=tuple(float(v) for v in tile_mean),
        tile_inverse_covariance=tile_inverse,
        far_radius=radius,
        max_far_tile_fraction=1.0,
        spread_mean=tuple(float(v) for v in spreads.mean(axis=0)),
        spread_inverse_covariance=_inverse_covariance(spreads),
        max_stain_distance=float("inf"),
        training={},
    )
    figures = [slide_figures(f, unlimited) for f in measured.values()]
    far = np.array([f["far_tile_fraction"] for f in figures])
    distance = np.array([f["stain_distance"] for f in figures])
    return replace(
        unlimited,
        max_far_tile_fraction=float(min(1.0, MARGIN * far.max())),
        max_stain_distance=float(MARGIN * distance.max()),
        training={
            "patients": len(measured),
            "tiles": len(tiles),
            "tile_quantile": TILE_QUANTILE,
            "margin": MARGIN,
            "far_tile_fraction": _spread(far),
            "stain_distance": _spread(distance),
        },
    )


def _spread(values: np.ndarray) -> dict[str, float]:
    """Median, 95th percentile and largest of a per-patient figure."""
    return {
        "median": float(np.median(values)),
        "p95": float(np.quantile(values, 0.95)),
        "max": float(values.max()),
    }
