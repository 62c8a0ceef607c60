"""uint8 model input: the tile normalisation moved from numpy into the ONNX graph, no retraining.

A `float32-nchw` model takes the network's own input, which the worker computes in numpy for every
tile (`core.tiles.normalise`): four bytes per channel and a float pass in Python's thread. This
module prepends the same arithmetic to the graph, as ONNX nodes:

    tiles uint8 (N, H, W, 3) -> Transpose (N, 3, H, W) -> [Gather BGR] -> Cast float
          -> Sub 255*mean -> Mul 1/(255*std) -> the unchanged network

with `onnx.compose.merge_models`, and rewrites the tile contract's `input_format` to `uint8-nhwc`.
Every other metadata entry (calibration, threshold, identity, stain reference) is carried over.
`idcscan export` writes new models this way; `idcscan models uint8-input` converts an existing
file (the shipped reference model was converted so). `convert_file` checks the result against the
original on tiles before it writes anything: the probabilities must agree within
`PARITY_TOLERANCE`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from idcscan.core.onnxmodel import INPUT_NAME, OnnxModel
from idcscan.core.tiles import FLOAT32_NCHW, UINT8_NHWC, TileSpec

PARITY_TOLERANCE = 1e-5
# The prefix's output, joined to the network's input by `merge_models`; no idcscan graph uses it.
NORMALISED = "idcscan_normalised_tiles"
# Random tiles checked when the caller gives none (real patches are a stronger check).
PARITY_RANDOM_TILES = 512


def _normalisation_graph(spec: TileSpec, opset: list[onnx.OperatorSetIdProto]) -> onnx.ModelProto:
    """uint8 NHWC `tiles` -> the float NCHW network input that `core.tiles.normalise` computes.

    The transpose (and the BGR swap) move uint8 bytes, before the cast: measured on the reference
    model, bare onnxruntime then runs as fast as on the float32 file (2,569 against 2,491
    tiles/s, shared machine), where transposing after the cast cost it a sixth (2,066)."""
    size = spec.tile_size
    per_channel = (1, 3, 1, 1)
    constants: dict[str, np.ndarray] = {
        "idcscan_offset": (np.float32(255.0) * np.asarray(spec.mean, np.float32)).reshape(
            per_channel
        ),
        "idcscan_scale": (
            np.float32(1.0) / (np.float32(255.0) * np.asarray(spec.std, dtype=np.float32))
        ).reshape(per_channel),
        "idcscan_bgr": np.asarray([2, 1, 0], dtype=np.int64),
    }
    nodes = [helper.make_node("Transpose", [INPUT_NAME], ["idcscan_nchw"], perm=[0, 3, 1, 2])]
    current = "idcscan_nchw"
    if spec.channel_order == "BGR":
        nodes.append(
            helper.make_node("Gather", [current, "idcscan_bgr"], ["idcscan_bgr_out"], axis=1)
        )
        current = "idcscan_bgr_out"
    nodes += [
        helper.make_node("Cast", [current], ["idcscan_float"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["idcscan_float", "idcscan_offset"], ["idcscan_centred"]),
        helper.make_node("Mul", ["idcscan_centred", "idcscan_scale"], [NORMALISED]),
    ]
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes,
        "idcscan_uint8_input",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info(NORMALISED, TensorProto.FLOAT, ["batch", 3, size, size])],
        initializer=[numpy_helper.from_array(v, k) for k, v in constants.items() if k in used],
    )
    return helper.make_model(graph, opset_imports=opset)


def with_uint8_input(model: onnx.ModelProto, spec: TileSpec) -> onnx.ModelProto:
    """`model` (a `float32-nchw` idcscan graph with tile contract `spec`) taking uint8 NHWC tiles.

    The metadata is the caller's to set: the merged graph carries none (`convert`)."""
    if spec.input_format != FLOAT32_NCHW:
        raise ValueError(f"the model already takes {spec.input_format} input")
    prefix = _normalisation_graph(spec, list(model.opset_import))
    prefix.ir_version = model.ir_version
    # merge_models keeps the second graph's input names only where io_map does not join them:
    # the network's `tiles` becomes the prefix's output, and the prefix's `tiles` the model's.
    body = onnx.ModelProto()
    body.CopyFrom(model)
    del body.metadata_props[:]
    renamed = compose.add_prefix(body, "net_", rename_outputs=False)
    merged = compose.merge_models(prefix, renamed, io_map=[(NORMALISED, "net_" + INPUT_NAME)])
    # merge_models lists the default domain once per graph; onnxruntime's tools want it once.
    del merged.opset_import[:]
    merged.opset_import.extend(model.opset_import)
    merged.doc_string = model.doc_string
    merged.producer_name, merged.producer_version = model.producer_name, model.producer_version
    return merged


def convert(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of an idcscan model taking uint8 tiles, its metadata carried over and its tile
    contract's `input_format` rewritten (nothing else in the contract changes)."""
    metadata = {p.key: p.value for p in model.metadata_props}
    spec = TileSpec.from_metadata(metadata)
    merged = with_uint8_input(model, spec)
    entries = {**metadata, **replace(spec, input_format=UINT8_NHWC).to_metadata()}
    for key, value in entries.items():
        merged.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(merged)
    return merged


def parity(original: Path, converted: Path, tiles: np.ndarray) -> float:
    """Largest difference in IDC probability between two model files on the same uint8 tiles."""
    before = OnnxModel(original, provider="cpu").predict(tiles)
    after = OnnxModel(converted, provider="cpu").predict(tiles)
    return float(np.max(np.abs(before - after))) if len(tiles) else 0.0


def convert_file(source: Path, target: Path, tiles: np.ndarray | None = None) -> float:
    """Write `source` converted to `target` (which may be `source`) once its probabilities agree
    with the original's on `tiles` (default: random tiles); returns the largest difference."""
    source, target = Path(source), Path(target)
    model = onnx.load(str(source))
    converted = convert(model)
    if tiles is None:
        spec = TileSpec.from_metadata({p.key: p.value for p in model.metadata_props})
        shape = (PARITY_RANDOM_TILES, spec.tile_size, spec.tile_size, 3)
        tiles = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    # Written beside the target and moved into place: no half-written model, even in place.
    fd, scratch = tempfile.mkstemp(suffix=".onnx", dir=target.parent)
    os.close(fd)
    shutil.copymode(source, scratch)  # mkstemp's 0600 would hide a shipped model from others
    try:
        onnx.save(converted, scratch)
        difference = parity(source, Path(scratch), tiles)
        if difference > PARITY_TOLERANCE:
            raise RuntimeError(
                f"the uint8 model disagrees with the original by {difference:.2e} "
                f"> {PARITY_TOLERANCE}"
            )
        os.replace(scratch, target)
    finally:
        Path(scratch).unlink(missing_ok=True)
    return difference
