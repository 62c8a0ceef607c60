"""Training and evaluation presets: uint8 tiles (N, H, W, 3) in, model input (N, 3, H, W) out.

Augmentation works on whole batches of uint8 tiles in torch and ends in uint8 again; the model
input is then made by `idcscan.core.tiles.to_model_input`, the function the worker uses, so that
training, evaluation and scoring share one preprocessing. Training only:

- the 8 right-angle rotations and flips (tissue has no orientation);
- small shifts (up to `max_shift` of the tile) and zooms (`zoom` range), reflect-padded;
- H&E stain jitter in the haematoxylin-eosin-DAB optical-density space (Tellez et al. 2018):
  each stain's density scaled by 1 +- `stain_sigma` and shifted by +- `stain_sigma`;
- brightness and contrast jitter of +- `brightness`, +- `contrast`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from idcscan.core.tiles import TileSpec, to_model_input

# Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB), as in scikit-image.
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def dihedral(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image (N, C, H, W) rotated by a random multiple of 90 degrees and maybe flipped."""
    choice = torch.randint(0, 8, (x.shape[0],), generator=generator)
    out = x.clone()
    for k in range(8):
        index = torch.nonzero(choice == k).flatten()
        if len(index) == 0:
            continue
        part = torch.rot90(x[index], k % 4, dims=(2, 3))
        out[index] = torch.flip(part, dims=(3,)) if k >= 4 else part
    return out


def shift_and_zoom(
    x: torch.Tensor, max_shift: float, zoom: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """Random translation (fraction of the tile) and isotropic zoom, reflect-padded."""
    n = x.shape[0]
    scale = torch.empty(n).uniform_(1.0 / zoom[1], 1.0 / zoom[0], generator=generator)
    shift = torch.empty(n, 2).uniform_(-2 * max_shift, 2 * max_shift, generator=generator)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def stain_jitter(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Perturb haematoxylin, eosin and DAB densities of RGB images in [0, 1] (N, 3, H, W)."""
    n = x.shape[0]
    density = -torch.log(x.clamp(min=1.0 / 255.0))  # optical density per RGB channel
    hed = torch.einsum("nchw,cd->ndhw", density, _HED_FROM_RGB)
    alpha = torch.empty(n, 3, 1, 1).uniform_(1 - sigma, 1 + sigma, generator=generator)
    beta = torch.empty(n, 3, 1, 1).uniform_(-sigma, sigma, generator=generator)
    density = torch.einsum("ndhw,dc->nchw", hed * alpha + beta, _RGB_FROM_HED)
    return torch.exp(-density)


def brightness_contrast(
    x: torch.Tensor, brightness: float, contrast: float, generator: torch.Generator
) -> torch.Tensor:
    n = x.shape[0]
    gain = torch.empty(n, 1, 1, 1).uniform_(1 - contrast, 1 + contrast, generator=generator)
    offset = torch.empty(n, 1, 1, 1).uniform_(-brightness, brightness, generator=generator)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * gain + mean + offset


@dataclass(frozen=True)
class ClassificationPresetTrain:
    """The training preset: augment uint8 tiles, then the shared preprocessing."""

    spec: TileSpec
    max_shift: float = 0.08
    zoom: tuple[float, float] = (0.9, 1.1)
    stain_sigma: float = 0.05
    brightness: float = 0.08
    contrast: float = 0.1

    def augment(self, tiles: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """Augmented copies of uint8 tiles (N, H, W, 3), still uint8 (N, H, W, 3)."""
        x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float() / 255.0
        x = dihedral(x, generator)
        x = shift_and_zoom(x, self.max_shift, self.zoom, generator)
        x = stain_jitter(x, self.stain_sigma, generator)
        x = brightness_contrast(x, self.brightness, self.contrast, generator)
        out = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        return out.permute(0, 2, 3, 1).contiguous().numpy()

    def __call__(self, tiles: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        return torch.from_numpy(to_model_input(self.augment(tiles, generator), self.spec))


@dataclass(frozen=True)
class ClassificationPresetEval:
    """The evaluation preset: the shared preprocessing alone, exactly what the worker does."""

    spec: TileSpec

    def __call__(self, tiles: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(to_model_input(tiles, self.spec))
