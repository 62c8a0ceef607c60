"""Small ONNX models with idcscan's I/O contract, built with onnx.helper (no torch needed).

`tiny` is a conv + pool + linear + softmax with fixed random weights, for tests. `cnn` is three
conv blocks (about the compute of a small patch classifier), for benchmarks when the reference
model is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from idcscan.core.onnxmodel import INPUT_NAME, OUTPUT_NAME
from idcscan.core.tiles import TileSpec


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def build_model(
    path: Path, spec: TileSpec | None = None, widths: tuple[int, ...] = (8,), seed: int = 0
) -> Path:
    spec = spec or TileSpec(model_version="test-tiny")
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current, channels = INPUT_NAME, 3
    for i, width in enumerate(widths):
        w = rng.normal(0, (2.0 / (9 * channels)) ** 0.5, (width, channels, 3, 3))
        inits += [_init(f"w{i}", w), _init(f"b{i}", rng.normal(0, 0.1, width))]
        nodes.append(
            helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1])
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        current = f"r{i}"
        if i < len(widths) - 1:
            nodes.append(
                helper.make_node(
                    "MaxPool", [current], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]
                )
            )
            current = f"p{i}"
        channels = width
    inits += [
        _init("fc_w", rng.normal(0, 1.0, (channels, 2))),
        _init("fc_b", np.zeros(2)),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "two"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["features"]),
        helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("Slice", ["probs", "one", "two", "one"], ["idc"]),
        helper.make_node("Reshape", ["idc", "flat"], [OUTPUT_NAME]),
    ]
    size = spec.tile_size
    graph = helper.make_graph(
        nodes,
        "idcscan-test",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in spec.to_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_benchmark_model(path: Path) -> Path:
    return build_model(path, TileSpec(model_version="bench-cnn"), widths=(32, 64, 128), seed=1)
