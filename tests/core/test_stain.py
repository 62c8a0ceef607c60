"""The stain check is a pure function of uint8 tiles: synthetic H&E tiles made by Beer-Lambert
from the same stain vectors, and the reference model's own reference."""

from __future__ import annotations

import numpy as np
import pytest

from idcscan.core.onnxmodel import read_manifest, reference_model
from idcscan.core.stain import (
    STAIN_VECTORS,
    StainReference,
    check_slide,
    reference_from_patients,
    tile_features,
)

SIZE = 50


def stained_tiles(
    rng: np.random.Generator,
    n: int,
    nuclei: float,
    haematoxylin: tuple[float, float],
    eosin: tuple[float, float],
    noise: float = 0.02,
) -> np.ndarray:
    """uint8 RGB tiles: a share `nuclei` of pixels holds the first (H, E) densities, the rest
    (stroma) the second ones, each with a little noise; the light through both stains."""
    shape = (n, SIZE, SIZE)
    is_nucleus = rng.random(shape) < nuclei
    h = np.where(is_nucleus, haematoxylin[0], haematoxylin[1]) + rng.normal(0, noise, shape)
    e = np.where(is_nucleus, eosin[0], eosin[1]) + rng.normal(0, noise, shape)
    density = (
        np.maximum(h, 0)[..., None] * STAIN_VECTORS[0]
        + np.maximum(e, 0)[..., None] * (STAIN_VECTORS[1])
    )
    return np.clip(np.round(255 * 10.0**-density), 0, 255).astype(np.uint8)


def typical(rng: np.random.Generator, n: int) -> np.ndarray:
    """H&E as the training patients show it at 4 um/px: dark nuclei in pink stroma."""
    return stained_tiles(rng, n, nuclei=0.3, haematoxylin=(0.35, 0.05), eosin=(0.12, 0.22))


def pure_eosin(n: int) -> np.ndarray:
    """Eosin alone, evenly: no nucleus, no texture."""
    return stained_tiles(np.random.default_rng(0), n, 0.0, (0.0, 0.0), (0.4, 0.4), noise=0.0)


def test_deconvolution_recovers_the_densities_it_was_made_with() -> None:
    tiles = stained_tiles(np.random.default_rng(1), 4, 1.0, (0.5, 0.0), (0.2, 0.0), noise=0.0)
    features = tile_features(tiles)
    assert features[:, 0] == pytest.approx(0.5, abs=0.01)  # haematoxylin
    assert features[:, 1] == pytest.approx(0.2, abs=0.01)  # eosin
    assert features[:, 2:] == pytest.approx(0.0, abs=0.01)  # an even tile has no spread


def test_background_carries_no_figure() -> None:
    white = np.full((2, SIZE, SIZE, 3), 255, dtype=np.uint8)
    assert np.isnan(tile_features(white)).all()


def synthetic_reference() -> StainReference:
    rng = np.random.default_rng(2)
    patients = {}
    for i in range(20):  # patients differ a little in how strongly they were stained
        scale = 1.0 + 0.15 * rng.standard_normal()
        patients[str(i)] = tile_features(
            stained_tiles(
                rng,
                30,
                nuclei=0.3 + 0.05 * rng.standard_normal(),
                haematoxylin=(0.35 * scale, 0.05 * scale),
                eosin=(0.12 * scale, 0.22 * scale),
            )
        )
    return reference_from_patients(patients)


def test_a_typical_he_tile_is_in_and_a_pure_eosin_tile_is_off() -> None:
    reference = synthetic_reference()
    on = check_slide(tile_features(typical(np.random.default_rng(3), 1)), reference)
    assert on.in_distribution and on.reason is None
    off = check_slide(tile_features(pure_eosin(1)), reference)
    assert not off.in_distribution
    assert off.far_tile_fraction == 1.0
    assert off.reason is not None and "outside the training tiles' stain" in off.reason


def test_the_limits_let_every_reference_patient_pass() -> None:
    reference = synthetic_reference()
    assert reference.training["patients"] == 20
    assert reference.max_stain_distance > reference.training["stain_distance"]["max"]
    assert reference.max_far_tile_fraction >= reference.training["far_tile_fraction"]["max"]


def test_the_reference_travels_as_json() -> None:
    reference = synthetic_reference()
    assert StainReference.from_json(reference.to_json()) == reference
    assert StainReference.from_metadata(reference.to_metadata()) == reference
    assert StainReference.from_metadata({}) is None


def test_without_a_reference_nothing_is_flagged() -> None:
    assert check_slide(tile_features(pure_eosin(3)), None).in_distribution


def test_a_reference_needs_patients() -> None:
    with pytest.raises(ValueError, match="at least 3 patients"):
        reference_from_patients({"a": tile_features(typical(np.random.default_rng(4), 5))})


def test_the_reference_models_own_reference_flags_pure_eosin_not_typical_he() -> None:
    reference = read_manifest(reference_model()).stain
    assert reference is not None and reference.training["patients"] == 234
    check = check_slide(tile_features(pure_eosin(20)), reference)
    assert not check.in_distribution
    assert check.far_tile_fraction == 1.0
    assert check_slide(
        tile_features(typical(np.random.default_rng(5), 20)), reference
    ).in_distribution
