"""The tile contract: validation, preprocessing, and the round trip through real ONNX metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from idcscan.core.onnxmodel import INPUT_NAME, OUTPUT_NAME, OnnxModel, read_manifest
from idcscan.core.tiles import METADATA_KEY, TileSpec, pad_tile, to_model_input


def _identity_mean_model(path: Path, spec: TileSpec) -> None:
    """A real ONNX model with idcscan's I/O contract: the probability is the input's mean, squashed."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", [INPUT_NAME], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Sigmoid", ["mean"], [OUTPUT_NAME]),
        ],
        "mean_model",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, 50, 50])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(
        model, {**spec.to_metadata(), "idcscan.model": '{"architecture": "mean"}'}
    )
    onnx.checker.check_model(model)
    onnx.save(model, path)


def test_spec_round_trips_through_onnx_metadata(tmp_path: Path) -> None:
    spec = TileSpec(
        threshold=0.37, model_version="2026.11-test", mean=(0.7, 0.5, 0.6), extra={"run": "r1"}
    )
    path = tmp_path / "model.onnx"
    _identity_mean_model(path, spec)

    manifest = read_manifest(path)
    assert manifest.spec == spec
    assert manifest.architecture == "mean"
    assert manifest.version == "2026.11-test"
    # and through the onnx package too, as the trainer writes it
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert TileSpec.from_metadata(props) == spec


def test_model_runs_on_preprocessed_tiles(tmp_path: Path) -> None:
    spec = TileSpec()
    path = tmp_path / "model.onnx"
    _identity_mean_model(path, spec)
    tiles = np.random.default_rng(0).integers(0, 256, (7, 50, 50, 3), dtype=np.uint8)
    expected = 1 / (1 + np.exp(-to_model_input(tiles, spec).mean(axis=(1, 2, 3))))
    np.testing.assert_allclose(OnnxModel(path).predict(tiles, batch_size=3), expected, rtol=1e-5)


def test_model_without_contract_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bare.onnx"
    _identity_mean_model(path, TileSpec())
    model = onnx.load(path)
    del model.metadata_props[:]
    onnx.save(model, path)
    with pytest.raises(ValueError, match="no tile contract"):
        OnnxModel(path)


def test_to_model_input_normalises_channels_first() -> None:
    spec = TileSpec(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    tiles = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    tiles[..., 0] = 255
    out = to_model_input(tiles, spec)
    assert out.shape == (2, 3, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], 1.0)  # (1 - 0.5) / 0.5
    np.testing.assert_allclose(out[:, 1], -1.0)  # (0 - 0.25) / 0.25
    np.testing.assert_allclose(out[:, 2], 0.0)


def test_bgr_models_get_channels_swapped() -> None:
    tiles = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    tiles[..., 0] = 255  # red
    rgb = to_model_input(tiles, TileSpec())
    bgr = to_model_input(tiles, TileSpec(channel_order="BGR"))
    np.testing.assert_array_equal(rgb[:, 0], bgr[:, 2])


def test_to_model_input_rejects_wrong_dtype() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(np.zeros((1, 50, 50, 3), dtype=np.float32), TileSpec())


def test_pad_tile_fills_background_bottom_right() -> None:
    small = np.zeros((30, 50, 3), dtype=np.uint8)
    padded = pad_tile(small, 50)
    assert padded.shape == (50, 50, 3)
    assert (padded[:30] == 0).all() and (padded[30:] == 255).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mpp": 0},
        {"threshold": 1.5},
        {"channel_order": "RGBA"},
        {"std": (1.0, 0.0, 1.0)},
        {"class_names": ("a",)},
    ],
)
def test_invalid_specs_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TileSpec(**kwargs)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        TileSpec.from_metadata({METADATA_KEY: '{"mpp": 4.0, "magnification": 2.5}'})


def test_model_with_two_class_output_is_refused(tmp_path: Path) -> None:
    """A raw classifier (logits for both classes) is not an idcscan model: refused at load."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", [INPUT_NAME], [OUTPUT_NAME], axes=[2, 3], keepdims=0)],
        "two_class",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, 50, 50])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(model, TileSpec().to_metadata())
    path = tmp_path / "two_class.onnx"
    onnx.save(model, path)
    with pytest.raises(ValueError, match="one probability per tile"):
        OnnxModel(path)


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_cuda_asked_for_never_runs_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime lists its CUDA provider, but the session cannot start it (here: a CPU build
    that claims CUDA, standing in for a GPU build whose CUDA or cuDNN libraries do not load).
    onnxruntime then runs on the CPU with a warning; with `cuda` asked for, that is an error."""
    import onnxruntime

    from idcscan.core.onnxmodel import reference_model

    real = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in real:
        pytest.skip("this onnxruntime has a CUDA provider")
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *real]
    )
    with pytest.raises(RuntimeError, match="refusing to run on the CPU"):
        OnnxModel(reference_model(), provider="cuda")
    assert OnnxModel(reference_model(), provider="auto").provider == "CPUExecutionProvider"


def test_a_file_that_is_not_an_onnx_model_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from idcscan.cli import main as cli
    from idcscan.core.onnxmodel import OnnxModel

    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not an ONNX model onnxruntime can load"):
        OnnxModel(junk, provider="cpu")
    slide = Path(__file__).resolve().parents[2] / "samples" / "wsi" / "CMU-1-Small-Region.svs"
    assert cli(["score", str(slide), "--model", str(junk), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an ONNX model" in err and "Traceback" not in err
