"""The speed-only model the benchmarks use is a worker-ready file of the network it names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.untrained_model import export_untrained
from idcscan.core.onnxmodel import OnnxModel
from idcscan.core.tiles import UINT8_NHWC

pytestmark = pytest.mark.train


def test_an_untrained_network_exports_with_the_tile_contract(tmp_path: Path) -> None:
    path = export_untrained("resnet18", 0.125, tmp_path / "m.onnx")
    model = OnnxModel(path, provider="cpu")
    assert model.spec.input_format == UINT8_NHWC
    assert model.manifest.version == "untrained-resnet18-w0.125"
    assert model.manifest.architecture == "resnet18"
    tiles = np.random.default_rng(0).integers(0, 256, (3, 50, 50, 3), dtype=np.uint8)
    probabilities = model.predict(tiles)
    assert probabilities.shape == (3,) and np.all((probabilities > 0) & (probabilities < 1))
