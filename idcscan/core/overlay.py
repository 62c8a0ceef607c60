"""The colours of a probability map, shared by the worker's heatmap and the API's viewer, so a
reader sees the same ramp, threshold and missed-IDC colour in both."""

from __future__ import annotations

import numpy as np

# Colour ramp of the probability (perceptually ordered: dark blue, teal, yellow, red).
_RAMP = np.array(
    [[49, 54, 149], [69, 117, 180], [116, 173, 209], [254, 224, 144], [244, 109, 67], [165, 0, 38]],
    dtype=np.float32,
)
MISSED_COLOUR = (0, 230, 255)
"""Cyan: IDC in the ground truth that the model called negative. Stands out against the ramp."""


def colour_map(p: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> RGB uint8 along the ramp."""
    position = np.clip(p, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    return (_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).astype(np.uint8)


def missed_idc(grid: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Tiles labelled IDC (1) whose probability is under the threshold (or that were not scored)."""
    return (labels == 1) & ~(np.nan_to_num(grid, nan=0.0) >= threshold)


def probability_rgba(
    grid: np.ndarray,
    labels: np.ndarray | None,
    threshold: float,
    alpha: int = 255,
    missed_alpha: int = 255,
    over_threshold_only: bool = False,
) -> np.ndarray:
    """RGBA uint8 of a (rows, cols) probability grid (NaN: not scored, transparent); missed IDC
    in `MISSED_COLOUR` where `labels` (same shape, 1 = IDC) are given."""
    rgba = np.zeros((*grid.shape, 4), dtype=np.uint8)
    shown = ~np.isnan(grid)
    if over_threshold_only:
        shown &= np.nan_to_num(grid, nan=0.0) >= threshold
    rgba[shown, :3] = colour_map(grid[shown])
    rgba[shown, 3] = alpha
    if labels is not None:
        missed = missed_idc(grid, labels, threshold)
        rgba[missed, :3] = MISSED_COLOUR
        rgba[missed, 3] = missed_alpha
    return rgba
