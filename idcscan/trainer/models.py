"""AlexNet, ResNet-18 and DenseNet-121 adapted to 50x50 px tiles, and the export head.

Adaptation to 50x50 input, and why:

- The ImageNet stems downsample 4x (AlexNet: 11x11 stride 4; ResNet/DenseNet: 7x7 stride 2 then a
  3x3 max-pool) before any feature is learnt; on a 50 px tile that leaves 12x12 px after the stem
  and 2x2 or 1x1 px before the classifier, too coarse for nuclear texture. Each network here gets
  a 3x3 stride-2 stem (25x25 after it). ResNet and DenseNet drop the stem max-pool, so their
  stages see 25, 13, 7 and 4 px; AlexNet keeps its three max-pools (13, 7 and 4 px after them).
- Every network ends in a global mean over H and W (ONNX `ReduceMean`) before its classifier.
  torchvision AlexNet's `AdaptiveAvgPool2d((6, 6))` exports to ONNX only when 6 divides the
  feature map, and then as a pool fixed to one tile size; the mean exports for any size.
- `width` scales every channel count (1.0 = the published widths). The reference model is trained
  from scratch on a shared 2-core CPU, so it uses narrower networks; the topology (layers, blocks,
  growth pattern) is the published one.

ResNet and DenseNet are built from torchvision's own blocks (`BasicBlock`, `DenseNet`) with the
attribute names torchvision uses, so `--pretrained PATH` can load ImageNet weights saved with
`torch.save(torchvision.models.resnet18(weights=...).state_dict(), PATH)` at width 1.0 (the
stem, whose shape differs, and the 1000-class head are skipped and reported).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models.densenet import DenseNet
from torchvision.models.resnet import BasicBlock

from idcscan.trainer.options import ARCHITECTURES

log = logging.getLogger(__name__)

NUM_CLASSES = 2


def _channels(base: int, width: float) -> int:
    return max(8, round(base * width))


def _global_average(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(x.mean(dim=(2, 3)), 1)


class AlexNet50(nn.Module):
    """AlexNet's five convolutions and three fully connected layers, with 3x3 kernels for 50 px.

    Channels 64-192-384-256-256 (times `width`), ReLU, max-pools after the 1st, 2nd and 5th
    convolution as in the original; the stem is 3x3 stride 2 instead of 11x11 stride 4.
    """

    def __init__(self, width: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()
        c = [_channels(n, width) for n in (64, 192, 384, 256, 256)]
        hidden = _channels(4096, width / 4)  # 1024 at width 1.0: 4096 over-fits 50 px tiles.
        self.features = nn.Sequential(
            nn.Conv2d(3, c[0], 3, stride=2, padding=1),  # 25x25
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),  # 13x13
            nn.Conv2d(c[0], c[1], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),  # 7x7
            nn.Conv2d(c[1], c[2], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c[2], c[3], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c[3], c[4], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),  # 4x4
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(c[4], hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(_global_average(self.features(x)))


class ResNet18(nn.Module):
    """ResNet-18 (torchvision `BasicBlock`, stages [2, 2, 2, 2]) with a 3x3 stride-2 stem."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        widths = [_channels(n, width) for n in (64, 128, 256, 512)]
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[0], stride=1)
        self.layer2 = self._make_layer(widths[1], stride=2)
        self.layer3 = self._make_layer(widths[2], stride=2)
        self.layer4 = self._make_layer(widths[3], stride=2)
        self.fc = nn.Linear(widths[3], NUM_CLASSES)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            # Zero-init the last BN of each block: each block starts as identity (He et al. 2019).
            if isinstance(m, BasicBlock) and m.bn2.weight is not None:
                nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        first = BasicBlock(self.inplanes, planes, stride, downsample)
        self.inplanes = planes
        return nn.Sequential(first, BasicBlock(planes, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(_global_average(x))


class DenseNet121(DenseNet):
    """torchvision's DenseNet-121 (blocks 6-12-24-16) with a 3x3 stride-2 stem and no stem pool.

    `width` scales the growth rate (32) and the stem's features (64).
    """

    def __init__(self, width: float = 1.0) -> None:
        growth = _channels(32, width)
        stem = 2 * growth
        super().__init__(
            growth_rate=growth,
            block_config=(6, 12, 24, 16),
            num_init_features=stem,
            num_classes=NUM_CLASSES,
        )
        self.features.conv0 = nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False)
        self.features.pool0 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.features(x))
        return self.classifier(_global_average(features))


def build_model(arch: str, width: float = 1.0) -> nn.Module:
    """A freshly initialised network for two classes (no IDC, IDC); outputs logits (N, 2)."""
    if arch == "alexnet":
        return AlexNet50(width)
    if arch == "resnet18":
        return ResNet18(width)
    if arch == "densenet121":
        return DenseNet121(width)
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")


def load_pretrained(model: nn.Module, path: Path) -> list[str]:
    """Copy every weight of a saved state dict whose name and shape match; return those skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any(v.dim() > 0 for v in usable.values()):  # BN step counters alone do not count
        raise ValueError(f"{path}: no weight matches this architecture and width")
    model.load_state_dict(usable, strict=False)
    skipped = sorted(set(own) - set(usable))
    log.info("loaded %d tensors from %s; %d left as initialised", len(usable), path, len(skipped))
    return skipped


class ProbabilityHead(nn.Module):
    """Wraps a logits network so that its output is the IDC probability (N,): the ONNX contract.

    The probability is `sigmoid(margin / temperature + bias)` with margin = IDC logit - no-IDC
    logit: with temperature 1 and bias 0, the two-class softmax; temperature and bias are fitted
    on validation (`idcscan.trainer.calibration`).
    """

    def __init__(self, network: nn.Module, temperature: float = 1.0, bias: float = 0.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.network = network
        self.temperature = float(temperature)
        self.bias = float(bias)

    def margin(self, tiles: torch.Tensor) -> torch.Tensor:
        """The calibrated logit margin (N,): the probability before its sigmoid."""
        logits = self.network(tiles).float()
        return (logits[:, 1] - logits[:, 0]) / self.temperature + self.bias

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.margin(tiles))


# Views of test-time augmentation, in the order they are added: 2 = the tile and its mirror,
# 4 = the four right-angle rotations, 8 = the whole dihedral group.
TTA_VIEWS = (1, 2, 4, 8)


def dihedral_view(tiles: torch.Tensor, k: int) -> torch.Tensor:
    """View `k` of 8 of a batch (N, C, H, W): k in 0-3 rotates by k right angles, 4-7 also
    mirrors. The views of `TTA_VIEWS` are prefixes of `TTA_ORDER`.

    Written with transposes and flips, which ONNX has (`torch.rot90` does not export)."""
    turns = k % 4
    if turns == 1:
        tiles = tiles.transpose(2, 3).flip(2)
    elif turns == 2:
        tiles = tiles.flip(2).flip(3)
    elif turns == 3:
        tiles = tiles.transpose(2, 3).flip(3)
    return tiles.flip(3) if k >= 4 else tiles


TTA_ORDER = (0, 4, 1, 3, 2, 5, 6, 7)


class ScoringGraph(nn.Module):
    """What an exported model computes: the mean calibrated margin of every member network on
    every test-time view of the batch, through one sigmoid.

    One member and one view is the plain model; several members are an ensemble (of fold
    models, say); several views are test-time augmentation over the dihedral group. Averaging
    margins (log-odds) rather than probabilities keeps the mean calibrated when the members are.
    Everything lives in one ONNX graph, so the worker needs no change.
    """

    def __init__(self, members: list[ProbabilityHead], views: int = 1) -> None:
        super().__init__()
        if not members:
            raise ValueError("a scoring graph needs at least one member")
        if views not in TTA_VIEWS:
            raise ValueError(f"views must be one of {TTA_VIEWS}, got {views}")
        self.members = nn.ModuleList(members)
        self.heads = members  # the same modules, typed for `margin`
        self.views = views

    def margin(self, tiles: torch.Tensor) -> torch.Tensor:
        n = tiles.shape[0]
        batch = torch.cat([dihedral_view(tiles, k) for k in TTA_ORDER[: self.views]])
        total = torch.zeros(n, dtype=torch.float32, device=tiles.device)
        for head in self.heads:
            total = total + head.margin(batch).reshape(self.views, n).sum(dim=0)
        return total / (self.views * len(self.heads))

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.margin(tiles))
