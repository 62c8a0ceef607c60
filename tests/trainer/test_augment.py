"""Augmentation: labels stay with their patches, the eval preset is the shared preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from idcscan.core.tiles import TileSpec, to_model_input  # noqa: E402
from idcscan.trainer.augment import (  # noqa: E402
    ClassificationPresetEval,
    ClassificationPresetTrain,
    dihedral,
)
from idcscan.trainer.data import PatchSet, load_patches  # noqa: E402
from idcscan.trainer.train import training_batches  # noqa: E402
from tests.conftest import SAMPLE_PATIENTS  # noqa: E402


@pytest.mark.parametrize("name", ["geometric", "current", "stain"])
def test_training_batches_keep_each_patch_with_its_label(name: str) -> None:
    from idcscan.trainer.augment import training_preset

    # Class 1 patches are dark, class 0 bright: after augmentation, brightness must still
    # tell every patch's label, in the order the batch gives the labels.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    base = np.where(labels[:, None, None, None] == 1, 60, 200).astype(np.int16)
    tiles = np.clip(base + rng.integers(-20, 21, (300, 50, 50, 3)), 0, 255).astype(np.uint8)
    patches = PatchSet(tiles, labels, np.array(["p"] * 300))
    preset = training_preset(TileSpec(), name)
    seen = 0
    for images, targets in training_batches(patches, np.arange(300), 64, preset, seed=0, epoch=0):
        brightness = images.mean(dim=(1, 2, 3))
        assert torch.equal(targets == 1, brightness < 0)
        seen += len(targets)
    assert seen == 300


def test_augmentation_changes_tiles_but_not_their_shape() -> None:
    tiles = load_patches(SAMPLE_PATIENTS, ["8916"]).tiles[:32]
    preset = ClassificationPresetTrain(TileSpec())
    out = preset.augment(tiles, torch.Generator().manual_seed(0))
    assert out.dtype == np.uint8 and out.shape == tiles.shape
    assert np.abs(out.astype(int) - tiles).mean() > 2
    again = preset.augment(tiles, torch.Generator().manual_seed(0))
    assert np.array_equal(out, again)  # seeded: reproducible


def test_dihedral_only_rotates_and_flips() -> None:
    x = torch.rand(16, 3, 50, 50)
    out = dihedral(x, torch.Generator().manual_seed(1))
    for before, after in zip(x, out, strict=True):
        candidates = [torch.rot90(before, k, (1, 2)) for k in range(4)]
        candidates += [torch.flip(c, (2,)) for c in candidates]
        assert any(torch.equal(after, c) for c in candidates)


def test_eval_preset_is_the_shared_preprocessing() -> None:
    tiles = load_patches(SAMPLE_PATIENTS, ["9125"]).tiles[:20]
    spec = TileSpec()
    assert np.array_equal(
        ClassificationPresetEval(spec)(tiles).numpy(), to_model_input(tiles, spec)
    )


@pytest.mark.parametrize("name", ["geometric", "current", "stain"])
def test_every_preset_keeps_the_value_range_and_the_tissue_colour(name: str) -> None:
    from idcscan.trainer.augment import training_preset

    patches = load_patches(SAMPLE_PATIENTS, ["8916"])
    preset = training_preset(TileSpec(), name)
    out = preset.augment(patches.tiles[:64], torch.Generator().manual_seed(3))
    assert out.dtype == np.uint8 and out.shape == patches.tiles[:64].shape
    # Colour jitter perturbs, it does not repaint: the mean colour of the batch stays near.
    drift = np.abs(out.reshape(-1, 3).mean(0) - patches.tiles[:64].reshape(-1, 3).mean(0))
    assert drift.max() < 25


def test_stain_preset_varies_colour_more_than_current() -> None:
    from idcscan.trainer.augment import training_preset

    tiles = np.repeat(load_patches(SAMPLE_PATIENTS, ["9125"]).tiles[:1], 256, axis=0)

    def colour_spread(name: str) -> float:
        out = training_preset(TileSpec(), name).augment(tiles, torch.Generator().manual_seed(0))
        return float(out.reshape(256, -1, 3).mean(axis=1).std(axis=0).mean())

    assert colour_spread("stain") > colour_spread("current") > 0


def test_blur_smooths_and_leaves_unchosen_tiles_alone() -> None:
    from idcscan.trainer.augment import gaussian_blur

    x = torch.rand(8, 3, 50, 50)
    assert torch.allclose(gaussian_blur(x, 1.0, 0.0, torch.Generator()), x)
    blurred = gaussian_blur(x, 1.5, 1.0, torch.Generator().manual_seed(0))
    assert blurred.std() < x.std()  # averaging neighbours lowers the variance of noise
    assert torch.allclose(blurred.mean(), x.mean(), atol=0.01)


def test_unknown_preset_is_refused() -> None:
    from idcscan.trainer.augment import AUGMENTATIONS, training_preset
    from idcscan.trainer.options import AUGMENTATION_NAMES

    assert tuple(AUGMENTATIONS) == AUGMENTATION_NAMES  # the CLI's names are the presets
    with pytest.raises(ValueError, match="unknown augmentation"):
        training_preset(TileSpec(), "macenko")
