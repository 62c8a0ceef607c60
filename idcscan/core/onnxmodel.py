"""An exported idcscan model: its ONNX session, its tile contract and identity from the metadata.

The I/O contract of every idcscan ONNX model: input `tiles` as produced by `to_model_input`, which
the tile contract's `input_format` names (uint8 (N, H, W, 3), or float32 (N, 3, H, W) in older
files); output `idc_probability`, float32 (N,), the softmax probability of IDC. The batch
dimension is dynamic. onnxruntime is imported lazily so that `import idcscan.core` stays light.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from idcscan.core.stain import StainReference
from idcscan.core.tiles import FLOAT32_NCHW, UINT8_NHWC, TileSpec, to_model_input

INPUT_NAME = "tiles"
# The onnxruntime type of the input each `TileSpec.input_format` promises.
INPUT_TYPES = {FLOAT32_NCHW: "tensor(float)", UINT8_NHWC: "tensor(uint8)"}
OUTPUT_NAME = "idc_probability"
IDENTITY_KEY = "idcscan.model"
"""Metadata key of the model's identity (JSON: version, architecture, trained_on, metrics...)."""


def reference_model() -> Path:
    """The reference model, shipped inside the package (package data): a wheel install carries it,
    so `idcscan score` and `idcscan demo` work without a checkout."""
    return Path(str(resources.files("idcscan").joinpath("models/idc-reference.onnx")))


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelManifest:
    """What an ONNX file says about itself: contract, identity and the training data's stain."""

    spec: TileSpec
    identity: dict[str, Any]
    stain: StainReference | None = None

    @property
    def version(self) -> str:
        return self.spec.model_version or str(self.identity.get("version", ""))

    @property
    def precision(self) -> str:
        """fp32, or the variant (int8, fp16) that `idcscan models variants` wrote."""
        return str(self.identity.get("precision", "fp32"))

    @property
    def architecture(self) -> str:
        return str(self.identity.get("architecture", "unknown"))

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ModelManifest:
        identity = json.loads(metadata.get(IDENTITY_KEY, "{}"))
        return cls(
            spec=TileSpec.from_metadata(metadata),
            identity=identity,
            stain=StainReference.from_metadata(metadata),
        )


def providers_for(choice: str) -> list[str]:
    """onnxruntime execution providers for `auto`, `cuda` or `cpu`: CUDA first where present."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if choice == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError("IDCSCAN_EXECUTION_PROVIDER=cuda but onnxruntime has no CUDA provider")
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel:
    """One onnxruntime session over an idcscan model. Create it once per process, after any fork."""

    def __init__(
        self, path: str | os.PathLike[str], provider: str = "auto", threads: int = 0
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such model file: {self.path}")
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # onnxruntime's idle threads spin by default, taking the cores the slide reader needs
        # while it prepares the next batch; measured: 0.64 -> 0.68 of the bare ceiling on 2 cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # onnxruntime's load errors share no base class but Exception: these are a file that is
        # not a usable ONNX graph, which is bad input (one line), not a crash (a traceback).
        from onnxruntime.capi.onnxruntime_pybind11_state import (
            Fail,
            InvalidArgument,
            InvalidGraph,
            InvalidProtobuf,
        )

        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=providers_for(provider)
            )
        except (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"{self.path} is not an ONNX model onnxruntime can load: {reason}"
            ) from exc
        if provider == "cuda" and self.provider != "CUDAExecutionProvider":
            # onnxruntime falls back to the CPU, with a log line, when its CUDA or cuDNN
            # libraries do not load: a GPU worker would then run for hours at CPU speed.
            raise RuntimeError(
                "IDCSCAN_EXECUTION_PROVIDER=cuda but onnxruntime could not start its CUDA "
                "provider (CUDA or cuDNN libraries missing?); refusing to run on the CPU"
            )
        metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.manifest = ModelManifest.from_metadata(metadata)
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [INPUT_NAME]:
            raise ValueError(
                f"model input must be {INPUT_NAME!r}, found {[i.name for i in inputs]}"
            )
        expected = INPUT_TYPES[self.spec.input_format]
        if inputs[0].type != expected:
            raise ValueError(
                f"the tile contract says {self.spec.input_format} input, but the graph takes "
                f"{inputs[0].type}"
            )
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if OUTPUT_NAME not in outputs or len(outputs[OUTPUT_NAME]) != 1:
            raise ValueError(
                f"model output must be {OUTPUT_NAME!r} with one probability per tile, shape (N,); "
                f"found {outputs}"
            )

    @property
    def spec(self) -> TileSpec:
        return self.manifest.spec

    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def run(self, model_input: np.ndarray) -> np.ndarray:
        """Probabilities of IDC for model input made by `to_model_input` (its `input_format`)."""
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: model_input})
        if out.shape != (len(model_input),):
            raise ValueError(f"model gave {out.shape} for {len(model_input)} tiles, not one each")
        return np.asarray(out, dtype=np.float32)

    def predict(self, tiles: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Probabilities of IDC for uint8 RGB tiles (N, H, W, 3), in batches."""
        out = np.empty(len(tiles), dtype=np.float32)
        for start in range(0, len(tiles), batch_size):
            chunk = tiles[start : start + batch_size]
            out[start : start + len(chunk)] = self.run(to_model_input(chunk, self.spec))
        return out


def read_manifest(path: str | os.PathLike[str]) -> ModelManifest:
    """The manifest of an ONNX file, without running it."""
    return OnnxModel(path, provider="cpu", threads=1).manifest
