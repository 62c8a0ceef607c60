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


def test_training_batches_keep_each_patch_with_its_label() -> None:
    # Class 1 patches are dark, class 0 bright: after augmentation, brightness must still
    # tell every patch's label, in the order the batch gives the labels.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    base = np.where(labels[:, None, None, None] == 1, 60, 200).astype(np.int16)
    tiles = np.clip(base + rng.integers(-20, 21, (300, 50, 50, 3)), 0, 255).astype(np.uint8)
    patches = PatchSet(tiles, labels, np.array(["p"] * 300))
    preset = ClassificationPresetTrain(TileSpec())
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
