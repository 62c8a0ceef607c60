"""The tile contract: the physical scale, size and preprocessing every model input follows.

The trainer writes a `TileSpec` into the ONNX file's metadata; the worker reads it back and tiles
every slide at that scale. `to_model_input` is the one function that turns uint8 RGB tiles into
model input, in training, evaluation and scoring alike.

A model takes one of two inputs (`TileSpec.input_format`): `float32-nchw`, the network's own input,
normalised here in numpy (every model exported before uint8 input existed); or `uint8-nhwc`, the
tiles as the reader cuts them, with the normalisation inside the ONNX graph
(`idcscan.trainer.uint8input`): a quarter of the bytes per batch and no float work in Python.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

METADATA_KEY = "idcscan.tile_spec"

# The Breast Histopathology Images patches: 40x scans (~0.25 um/px) downsampled 16:1.
DATASET_MPP = 4.0
DATASET_TILE_SIZE = 50
# Background in the dataset (and in slides reassembled from it) is white.
BACKGROUND_VALUE = 255
# What a model's input tensor holds: the normalised float network input, or the raw uint8 tiles.
FLOAT32_NCHW = "float32-nchw"
UINT8_NHWC = "uint8-nhwc"
INPUT_FORMATS = (FLOAT32_NCHW, UINT8_NHWC)


@dataclass(frozen=True)
class TileSpec:
    """What a model expects of a tile. Serialised as JSON under `METADATA_KEY` in ONNX metadata."""

    mpp: float = DATASET_MPP
    """Target scale of a tile, in micrometres per pixel."""
    tile_size: int = DATASET_TILE_SIZE
    """Tile edge in pixels at `mpp`."""
    stride: int = DATASET_TILE_SIZE
    """Step between tiles in pixels at `mpp`; equal to `tile_size` for non-overlapping tiles."""
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Per-channel mean subtracted after scaling to [0, 1]."""
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    """Per-channel divisor applied after the mean."""
    class_names: tuple[str, ...] = ("no_idc", "idc")
    threshold: float = 0.5
    """Decision threshold on the IDC probability, chosen on validation patients."""
    slide_min_idc_mm2: float = 0.08
    """The slide call: `idc` when at least this much tissue (mm2) reaches the threshold. Chosen
    on reassembled validation slides (`idcscan slide-rule`); 0.08 mm2 is two 200 um tiles."""
    model_version: str = ""
    input_format: str = FLOAT32_NCHW
    """What the model file's input holds (`INPUT_FORMATS`). `uint8-nhwc`: RGB tiles as cut, the
    graph applying `channel_order`, `mean` and `std` itself; absent in older files: float32."""
    extra: dict[str, str] = field(default_factory=dict)
    """Free-form identity of the model (architecture, training run, data) carried alongside."""

    def __post_init__(self) -> None:
        if self.mpp <= 0:
            raise ValueError(f"mpp must be positive, got {self.mpp}")
        if self.tile_size <= 0 or self.stride <= 0:
            raise ValueError("tile_size and stride must be positive")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values, std positive")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        if self.slide_min_idc_mm2 < 0:
            raise ValueError(f"slide_min_idc_mm2 must be >= 0, got {self.slide_min_idc_mm2}")
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(
                f"input_format must be one of {INPUT_FORMATS}, got {self.input_format!r}"
            )
        if len(self.class_names) != 2:
            raise ValueError("idcscan models are binary: two class names, negative first")

    @property
    def tile_um(self) -> float:
        """Edge of one tile in micrometres."""
        return self.mpp * self.tile_size

    def with_threshold(self, threshold: float) -> TileSpec:
        return replace(self, threshold=float(threshold))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TileSpec:
        raw: dict[str, Any] = json.loads(text)
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown tile contract fields: {sorted(unknown)}")
        for name in ("mean", "std", "class_names"):
            if name in raw:
                raw[name] = tuple(raw[name])
        return cls(**raw)

    def to_metadata(self) -> dict[str, str]:
        """The ONNX `metadata_props` entries that carry this contract."""
        return {METADATA_KEY: self.to_json()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> TileSpec:
        if METADATA_KEY not in metadata:
            raise ValueError(
                f"the model carries no tile contract (metadata key {METADATA_KEY!r}); "
                "export it with `idcscan export`"
            )
        return cls.from_json(metadata[METADATA_KEY])


def pad_tile(tile: np.ndarray, size: int) -> np.ndarray:
    """Pad a smaller (slide-edge) uint8 tile to `size` x `size` with background, top-left anchored."""
    h, w = tile.shape[:2]
    if h == size and w == size:
        return tile
    if h > size or w > size:
        raise ValueError(f"tile of {w}x{h} px is larger than {size}x{size}")
    out = np.full((size, size, 3), BACKGROUND_VALUE, dtype=np.uint8)
    out[:h, :w] = tile[..., :3]
    return out


def to_model_input(tiles: np.ndarray, spec: TileSpec) -> np.ndarray:
    """uint8 RGB tiles (N, H, W, 3) -> the input `spec` says the model takes: the tiles themselves
    (contiguous) for `uint8-nhwc`, else float32 (N, 3, H, W) normalised per `spec`.

    The only preprocessing in idcscan: the trainer, `idcscan evaluate` and the worker all call it.
    """
    if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 tiles of shape (N, H, W, 3), got {tiles.dtype} {tiles.shape}"
        )
    if spec.input_format == UINT8_NHWC:
        return np.ascontiguousarray(tiles)
    return normalise(tiles, spec)


def normalise(tiles: np.ndarray, spec: TileSpec) -> np.ndarray:
    """uint8 RGB tiles (N, H, W, 3) -> the network's float32 input (N, 3, H, W): channel order,
    scale to [0, 1], mean and std of `spec`. What a `uint8-nhwc` graph does inside."""
    if spec.channel_order == "BGR":
        tiles = tiles[..., ::-1]
    scale = np.float32(1.0 / 255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = np.float32(1.0) / np.asarray(spec.std, dtype=np.float32)
    x = tiles.astype(np.float32) * scale
    x -= mean
    x *= inv_std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
