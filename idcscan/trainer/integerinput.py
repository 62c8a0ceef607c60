"""INT8 on uint8 tiles: the tiles themselves as the first quantized tensor, no float prefix.

A `uint8-nhwc` model normalises its tiles inside the graph (`uint8input`): Cast to float, Sub
255*mean, Mul 1/(255*std). Quantised as it stands, that prefix stays: the quantizer re-quantizes
the float tiles it just made, and onnxruntime runs Sub and a QLinearMul over every input pixel.
Profiled on the reference model (one thread, 2,048 validation tiles), they took 31% of the INT8
graph's time, and INT8 ran only 1.44-1.7x FP32's tiles/s.

Yet with the same mean and std for every channel, the normalisation *is* a dequantization of
the tiles: (x - 255*mean) / (255*std) = scale * (x - zero_point) with scale = 1/(255*std) and
zero_point = 255*mean, rounded to an integer. So the quantizer is told to quantize the
normalised tiles with exactly that scale and zero point (`quant_overrides`), and the prefix with
its QuantizeLinear is then cut out (`feed_uint8_tiles`): the DequantizeLinear that fed the first
convolution reads the uint8 tiles directly (through the prefix's NHWC -> NCHW Transpose, on the
bytes, even where onnxruntime's pre-processing had moved it into the float arithmetic), and
onnxruntime fuses it into an integer QLinearConv on the tiles as cut. The one approximation is
the rounded zero point: for mean 0.5 every pixel reads half a quantization step (0.5/255 of the
intensity range) darker, which is below the quantization error the prefix itself made, and the
validation figures judge it as always.

Channels with different means or stds would need a per-channel zero point, which onnxruntime's
integer convolution does not take: those models keep the float prefix.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from idcscan.core.tiles import UINT8_NHWC, TileSpec
from idcscan.trainer.uint8input import NORMALISED

PREFIX_OPS = {"Mul", "Sub", "Transpose", "QuantizeLinear", "DequantizeLinear"}


def input_quantization(spec: TileSpec) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, zero point) that dequantize the uint8 tiles into the network's normalised input,
    or None when the model takes float input or its channels are normalised differently."""
    if spec.input_format != UINT8_NHWC or len(set(spec.mean)) > 1 or len(set(spec.std)) > 1:
        return None
    zero_point = round(255.0 * spec.mean[0])
    if not 0 <= zero_point <= 255:
        return None
    return (
        np.array(1.0 / (255.0 * spec.std[0]), dtype=np.float32),
        np.array(zero_point, dtype=np.uint8),
    )


def quant_overrides(spec: TileSpec) -> dict[str, object]:
    """`quantize_static`'s extra options that quantize the normalised tiles as `input_quantization`
    says (none when it does not apply)."""
    params = input_quantization(spec)
    if params is None:
        return {}
    scale, zero_point = params
    return {"TensorQuantOverrides": {NORMALISED: [{"scale": scale, "zero_point": zero_point}]}}


def feed_uint8_tiles(model: onnx.ModelProto, spec: TileSpec) -> bool:
    """Rewire `model` (a QDQ graph quantized with `quant_overrides`) so that what read the
    quantized normalised tiles reads the uint8 tiles instead, and drop the float prefix.

    True when done; False (the graph untouched) when the graph is not of that shape, e.g. its
    normalised tiles were quantized with other parameters."""
    params = input_quantization(spec)
    graph = model.graph
    quantize = _only(
        n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == NORMALISED
    )
    producers = {output: node for node in graph.node for output in node.output}
    prefix = _prefix(producers, NORMALISED)
    if params is None or quantize is None or prefix is None:
        return False
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    scale, zero_point = (constants.get(name) for name in quantize.input[1:3])
    if scale is None or zero_point is None or scale != params[0] or zero_point != params[1]:
        return False
    cast, perm = prefix
    tiles = cast.input[0]
    if perm is not None:  # the layout change, moved into the float arithmetic: on the bytes again
        tiles = f"{NORMALISED}_uint8"
        transpose = helper.make_node("Transpose", [cast.input[0]], [tiles], perm=perm)
        graph.node.insert(list(graph.node).index(cast), transpose)
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == quantize.output[0]:
                node.input[index] = tiles
    _prune(graph)
    return True


def _only(nodes: Iterable[onnx.NodeProto]) -> onnx.NodeProto | None:
    found = list(nodes)
    return found[0] if len(found) == 1 else None


def _prefix(
    producers: dict[str, onnx.NodeProto], normalised: str
) -> tuple[onnx.NodeProto, list[int] | None] | None:
    """The Cast that turns the uint8 tiles into floats, and the permutation of the Transposes met
    on the way (None if none), walking up from the normalised tiles through the prefix: its
    arithmetic (Sub, Mul: the same for every channel, so their order with a Transpose does not
    matter), what the quantizer put between them, and a Transpose that the pre-processing's
    optimizer may have moved below the Cast (it does in test-time-augmentation graphs)."""
    perm: list[int] | None = None
    node = producers.get(normalised)
    while node is not None and node.op_type in PREFIX_OPS:
        if node.op_type == "Transpose":
            inner = list(helper.get_attribute_value(node.attribute[0]))
            perm = inner if perm is None else [inner[axis] for axis in perm]
        node = producers.get(node.input[0])
    return (node, perm) if node is not None and node.op_type == "Cast" else None


def _prune(graph: onnx.GraphProto) -> None:
    """Drop the nodes and initializers that no graph output depends on any more."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
