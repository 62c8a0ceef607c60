"""Training and evaluation presets: uint8 tiles (N, H, W, 3) in, model input (N, 3, H, W) out.

Augmentation works on whole batches of uint8 tiles in torch and ends in uint8 again; the model
input is then made by `idcscan.core.tiles.normalise`, the arithmetic the worker's models apply
(in numpy for float32-input files, inside the graph for uint8-input ones), so that training,
evaluation and scoring share one preprocessing. Training only:

- the 8 right-angle rotations and flips (tissue has no orientation);
- small shifts (up to `max_shift` of the tile) and zooms (`zoom` range), reflect-padded;
- H&E stain jitter in the haematoxylin-eosin-DAB optical-density space (Tellez et al. 2018):
  each stain's density scaled by 1 +- `stain_sigma` and shifted by +- `stain_sigma`;
- brightness and contrast jitter of +- `brightness`, +- `contrast`;
- saturation and hue jitter (+- `saturation`, +- `hue` of a turn, in YIQ space);
- Gaussian blur of a random sigma up to `blur_sigma` on a `blur_p` share of the tiles (focus).

`AUGMENTATIONS` names the presets that cross-validation compares (`--augment`): `geometric`
(orientation, shift, zoom, brightness and contrast only), `current` (the seed's: `geometric` plus
light stain jitter) and `stain` (stronger stain jitter plus saturation, hue and blur). None of
them changes what the worker does: inference stays `normalise` alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from idcscan.core.tiles import TileSpec, normalise

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


_YIQ_FROM_RGB = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float32
)
_RGB_FROM_YIQ = torch.linalg.inv(_YIQ_FROM_RGB)


def saturation_hue(
    x: torch.Tensor, saturation: float, hue: float, generator: torch.Generator
) -> torch.Tensor:
    """Scale the chroma by 1 +- `saturation` and turn it by +- `hue` turns (YIQ space)."""
    n = x.shape[0]
    yiq = torch.einsum("nchw,dc->ndhw", x, _YIQ_FROM_RGB)
    gain = torch.empty(n).uniform_(1 - saturation, 1 + saturation, generator=generator)
    angle = torch.empty(n).uniform_(-hue, hue, generator=generator) * 2 * torch.pi
    cos, sin = torch.cos(angle) * gain, torch.sin(angle) * gain
    i, q = yiq[:, 1], yiq[:, 2]
    c, s = cos[:, None, None], sin[:, None, None]
    turned = torch.stack([yiq[:, 0], i * c - q * s, i * s + q * c], dim=1)
    return torch.einsum("ndhw,cd->nchw", turned, _RGB_FROM_YIQ)


def gaussian_blur(
    x: torch.Tensor, max_sigma: float, share: float, generator: torch.Generator
) -> torch.Tensor:
    """Blur a random `share` of the images with a 5x5 Gaussian of sigma in (0.1, `max_sigma`)."""
    n, channels, height, width = x.shape
    chosen = torch.rand(n, generator=generator) < share
    sigma = torch.empty(n).uniform_(0.1, max(max_sigma, 0.1), generator=generator)
    offsets = torch.arange(-2, 3, dtype=torch.float32)
    kernel_1d = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernel_1d = kernel_1d / kernel_1d.sum(dim=1, keepdim=True)
    identity = (offsets == 0).float()
    kernel_1d = torch.where(chosen[:, None], kernel_1d, identity)  # unchosen: unchanged
    kernel = kernel_1d[:, :, None] * kernel_1d[:, None, :]  # (n, 5, 5)
    weight = kernel.repeat_interleave(channels, dim=0)[:, None]  # (n * c, 1, 5, 5)
    padded = F.pad(x.reshape(1, n * channels, height, width), (2, 2, 2, 2), mode="reflect")
    return F.conv2d(padded, weight, groups=n * channels).reshape(n, channels, height, width)


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
    saturation: float = 0.0
    hue: float = 0.0
    blur_sigma: float = 0.0
    blur_p: float = 0.0

    def augment(self, tiles: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """Augmented copies of uint8 tiles (N, H, W, 3), still uint8 (N, H, W, 3)."""
        x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float() / 255.0
        x = dihedral(x, generator)
        x = shift_and_zoom(x, self.max_shift, self.zoom, generator)
        if self.stain_sigma > 0:
            x = stain_jitter(x, self.stain_sigma, generator)
        if self.saturation > 0 or self.hue > 0:
            x = saturation_hue(x.clamp(0.0, 1.0), self.saturation, self.hue, generator)
        x = brightness_contrast(x, self.brightness, self.contrast, generator)
        if self.blur_p > 0 and self.blur_sigma > 0:
            x = gaussian_blur(x, self.blur_sigma, self.blur_p, generator)
        out = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        return out.permute(0, 2, 3, 1).contiguous().numpy()

    def __call__(self, tiles: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        return torch.from_numpy(normalise(self.augment(tiles, generator), self.spec))


AUGMENTATIONS: dict[str, dict[str, float]] = {
    "geometric": {"stain_sigma": 0.0},
    "current": {},
    "stain": {
        "stain_sigma": 0.1,
        "saturation": 0.15,
        "hue": 0.03,
        "blur_sigma": 1.0,
        "blur_p": 0.25,
    },
}


def training_preset(spec: TileSpec, name: str) -> ClassificationPresetTrain:
    """The named augmentation preset (see the module's docstring)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose from {', '.join(AUGMENTATIONS)}")
    return ClassificationPresetTrain(spec, **AUGMENTATIONS[name])  # type: ignore[arg-type]


@dataclass(frozen=True)
class ClassificationPresetEval:
    """The evaluation preset: the shared preprocessing alone, exactly what the worker does."""

    spec: TileSpec

    def __call__(self, tiles: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(normalise(tiles, self.spec))
