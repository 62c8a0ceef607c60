"""The three networks on 50x50 tiles: shapes, ONNX export with a dynamic batch, ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from idcscan.core.onnxmodel import OnnxModel  # noqa: E402
from idcscan.core.tiles import TileSpec  # noqa: E402
from idcscan.trainer.export import PARITY_TOLERANCE, to_onnx, torch_probabilities  # noqa: E402
from idcscan.trainer.models import ProbabilityHead, build_model, load_pretrained  # noqa: E402
from idcscan.trainer.options import ARCHITECTURES  # noqa: E402

pytestmark = pytest.mark.train


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_exports_with_a_dynamic_batch_and_matches_torch(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ProbabilityHead(build_model(arch, width=0.125)).eval()
    assert model.network(torch.zeros(3, 3, 50, 50)).shape == (3, 2)
    path = tmp_path / f"{arch}.onnx"
    spec = TileSpec(model_version=f"test-{arch}")
    to_onnx(model, path, spec, {"version": spec.model_version, "architecture": arch})
    onnx_model = OnnxModel(path, provider="cpu")
    tiles = np.random.default_rng(0).integers(0, 256, (5, 50, 50, 3), dtype=np.uint8)
    for batch in (tiles[:1], tiles):
        probabilities = onnx_model.predict(batch)
        assert probabilities.shape == (len(batch),)
        assert np.all((probabilities >= 0) & (probabilities <= 1))
        expected = torch_probabilities(model, batch, spec)
        np.testing.assert_allclose(probabilities, expected, atol=PARITY_TOLERANCE)


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("vgg16")


def test_pretrained_imagenet_weights_load_where_shapes_match(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    imagenet_like = resnet18()  # same layout as ImageNet weights, without a download
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet_like.state_dict(), path)
    model = build_model("resnet18", width=1.0)
    skipped = load_pretrained(model, path)
    # Only the 7x7 stem (now 3x3) and the 1000-class head stay as initialised.
    assert skipped == ["conv1.weight", "fc.bias", "fc.weight"]
    assert torch.equal(
        model.state_dict()["layer3.1.conv2.weight"],
        imagenet_like.state_dict()["layer3.1.conv2.weight"],
    )
    with pytest.raises(ValueError, match="no weight matches"):
        load_pretrained(build_model("resnet18", width=0.25), path)
