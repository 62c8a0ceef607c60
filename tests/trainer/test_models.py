"""The three networks on 50x50 tiles: shapes, ONNX export with a dynamic batch, ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from idcscan.core.onnxmodel import OnnxModel  # noqa: E402
from idcscan.core.tiles import TileSpec, to_model_input  # noqa: E402
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


@pytest.mark.parametrize(("members", "views"), [(1, 2), (1, 8), (3, 1), (2, 4)])
def test_tta_and_ensemble_graphs_export_and_match_torch(
    members: int, views: int, tmp_path: Path
) -> None:
    from idcscan.trainer.models import ScoringGraph, dihedral_view

    torch.manual_seed(members * 10 + views)
    heads = [
        ProbabilityHead(build_model("resnet18", width=0.125), temperature=0.5 + i).eval()
        for i in range(members)
    ]
    graph = ScoringGraph(heads, views=views).eval()
    path = tmp_path / "graph.onnx"
    spec = TileSpec(model_version="test-graph")
    to_onnx(graph, path, spec, {"version": spec.model_version, "architecture": "resnet18"})
    tiles = np.random.default_rng(1).integers(0, 256, (7, 50, 50, 3), dtype=np.uint8)
    got = OnnxModel(path, provider="cpu").predict(tiles)
    np.testing.assert_allclose(got, torch_probabilities(graph, tiles, spec), atol=PARITY_TOLERANCE)

    # Written out by hand: the mean calibrated margin over members and views, then a sigmoid.
    x = torch.from_numpy(to_model_input(tiles, spec))
    order = (0, 4, 1, 3, 2, 5, 6, 7)[:views]
    with torch.inference_mode():
        margins = [h.margin(dihedral_view(x, k)) for h in heads for k in order]
        by_hand = torch.sigmoid(torch.stack(margins).mean(dim=0)).numpy()
    np.testing.assert_allclose(got, by_hand, atol=PARITY_TOLERANCE)


def test_full_dihedral_tta_is_invariant_to_rotating_the_tile() -> None:
    from idcscan.trainer.models import ScoringGraph, dihedral_view

    x = torch.rand(2, 3, 6, 6)
    for k in range(8):
        expected = torch.rot90(x, k % 4, dims=(2, 3))
        expected = torch.flip(expected, dims=(3,)) if k >= 4 else expected
        assert torch.equal(dihedral_view(x, k), expected)

    torch.manual_seed(0)
    graph = ScoringGraph([ProbabilityHead(build_model("alexnet", width=0.125))], views=8).eval()
    x = torch.rand(4, 3, 50, 50)
    with torch.inference_mode():
        turned = graph(torch.rot90(x, 1, dims=(2, 3)))
        np.testing.assert_allclose(graph(x).numpy(), turned.numpy(), atol=1e-5)


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


def test_tta_margins_are_recomputed_for_new_weights(trained_run: Path, tiny_dataset: Path) -> None:
    import os

    from idcscan.trainer.data import load_patches
    from idcscan.trainer.variants import _fold_view_margins

    patches = load_patches(tiny_dataset)
    val, held_out = patches.take(np.arange(20)), patches.take(np.arange(20, 40))
    first = _fold_view_margins(trained_run, val, held_out)
    cache = trained_run / "tta-margins.npz"
    assert first[0].shape == (8, 20) and cache.is_file()
    os.utime(cache, (1_000_000, 1_000_000))  # the weights are now newer than the cache
    np.savez_compressed(cache, val=np.zeros((8, 20)), held_out=np.zeros((8, 20)))
    os.utime(cache, (1_000_000, 1_000_000))
    again = _fold_view_margins(trained_run, val, held_out)
    np.testing.assert_allclose(again[0], first[0], atol=1e-5)  # recomputed, not the stale zeros
    assert np.array_equal(_fold_view_margins(trained_run, val, held_out)[0], again[0])
