"""uint8 model input: the normalisation moved into the graph changes no probability.

`data/idc-reference-float32-probabilities.npy` holds the shipped reference model's probabilities on
the sample patients (`load_patches(samples/idc)`, in its order) as it was before its conversion,
when it took float32 (N, 3, H, W) input: `idcscan models uint8-input` then rewrote it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
import onnx

from idcscan.core.onnxmodel import IDENTITY_KEY, OnnxModel, reference_model
from idcscan.core.tiles import (
    FLOAT32_NCHW,
    METADATA_KEY,
    UINT8_NHWC,
    TileSpec,
    normalise,
    to_model_input,
)
from idcscan.trainer.data import load_patches
from idcscan.trainer.uint8input import PARITY_TOLERANCE, convert, convert_file
from tests.conftest import ROOT, SAMPLE_PATIENTS
from tests.worker.models import build_model

BEFORE = Path(__file__).parent / "data" / "idc-reference-float32-probabilities.npy"


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_shipped_model_takes_uint8_and_scores_as_before_its_conversion() -> None:
    model = OnnxModel(reference_model(), "cpu")
    assert model.spec.input_format == UINT8_NHWC
    assert model.session.get_inputs()[0].type == "tensor(uint8)"
    patches = load_patches(SAMPLE_PATIENTS)
    before = np.load(BEFORE)
    assert len(before) == len(patches.tiles) == 779
    np.testing.assert_allclose(model.predict(patches.tiles), before, rtol=0, atol=PARITY_TOLERANCE)
    # Identity, calibration, threshold and stain reference came through the conversion.
    identity = model.manifest.identity
    shipped = json.loads((ROOT / "idcscan" / "models" / "idc-reference.metrics.json").read_text())
    assert identity["version"] == model.spec.model_version
    assert model.spec.threshold == pytest.approx(shipped["threshold"])
    assert model.manifest.stain is not None


def test_conversion_keeps_the_metadata_and_the_probabilities(tmp_path: Path) -> None:
    float_model = build_model(
        tmp_path / "float.onnx",
        TileSpec(model_version="bgr", channel_order="BGR", std=(0.2, 0.3, 0.4)),
    )
    proto = onnx.load(str(float_model))
    proto.metadata_props.add(key=IDENTITY_KEY, value=json.dumps({"version": "bgr"}))
    proto.metadata_props.add(key="idcscan.other", value="carried as is")
    onnx.save(proto, str(float_model))
    converted = tmp_path / "uint8.onnx"
    difference = convert_file(float_model, converted)
    assert difference <= PARITY_TOLERANCE
    assert list(onnx.load(str(converted)).opset_import) == list(proto.opset_import)
    before, after = _metadata(float_model), _metadata(converted)
    assert set(after) == set(before)
    assert {k: v for k, v in after.items() if k != METADATA_KEY} == {
        k: v for k, v in before.items() if k != METADATA_KEY
    }
    old_spec, new_spec = (
        TileSpec.from_json(before[METADATA_KEY]),
        TileSpec.from_json(after[METADATA_KEY]),
    )
    assert (old_spec.input_format, new_spec.input_format) == (FLOAT32_NCHW, UINT8_NHWC)
    assert new_spec == TileSpec.from_json(before[METADATA_KEY].replace(FLOAT32_NCHW, UINT8_NHWC))
    tiles = load_patches(SAMPLE_PATIENTS, ["8916"]).tiles
    old, new = OnnxModel(float_model, "cpu"), OnnxModel(converted, "cpu")
    assert to_model_input(tiles, new_spec).dtype == np.uint8
    np.testing.assert_allclose(new.predict(tiles), old.predict(tiles), rtol=0, atol=1e-5)
    # The float model still takes what it always took.
    np.testing.assert_array_equal(to_model_input(tiles, old_spec), normalise(tiles, old_spec))


def test_a_model_is_converted_once(tmp_path: Path) -> None:
    model = build_model(tmp_path / "float.onnx")
    convert_file(model, model)
    written = model.read_bytes()
    with pytest.raises(ValueError, match="already takes uint8-nhwc"):
        convert(onnx.load(str(model)))
    assert model.read_bytes() == written


def test_contract_and_graph_must_agree(tmp_path: Path) -> None:
    """A float graph whose contract claims uint8 input is refused when loaded, not mis-fed."""
    path = build_model(tmp_path / "lying.onnx", TileSpec(input_format=UINT8_NHWC))
    with pytest.raises(ValueError, match="uint8-nhwc input, but the graph takes tensor"):
        OnnxModel(path, "cpu")


def test_command_converts_and_checks_on_patches(tmp_path: Path) -> None:
    model = build_model(tmp_path / "float.onnx")
    out = tmp_path / "uint8.onnx"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "idcscan.cli",
            "models",
            "uint8-input",
            str(model),
            "--out",
            str(out),
            "--data",
            str(SAMPLE_PATIENTS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "779 patches" in done.stdout
    assert OnnxModel(out, "cpu").spec.input_format == UINT8_NHWC
    again = subprocess.run(
        [sys.executable, "-m", "idcscan.cli", "models", "uint8-input", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode != 0
    assert "already takes uint8-nhwc" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
