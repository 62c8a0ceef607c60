"""ONNX export of a trained run: the I/O contract, the tile contract, identity and the training
data's stain reference (`core/stain.py`) in the metadata.

The exported graph is `ProbabilityHead(network)` behind the tile normalisation
(`uint8input`): input `tiles` uint8 (N, H, W, 3) as the reader cuts them, with a dynamic batch,
output `idc_probability` float32 (N,). Every export is checked against torch on
real patches: the probabilities must agree within `PARITY_TOLERANCE`. `--int8` adds a statically
quantised variant (QDQ, calibrated on the same patches) and reports its accuracy change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from idcscan.core.metrics import Confusion
from idcscan.core.onnxmodel import IDENTITY_KEY, INPUT_NAME, OUTPUT_NAME, OnnxModel
from idcscan.core.stain import StainReference
from idcscan.core.tiles import UINT8_NHWC, TileSpec, normalise, to_model_input
from idcscan.trainer.integerinput import feed_uint8_tiles, quant_overrides
from idcscan.trainer.models import ProbabilityHead, build_model
from idcscan.trainer.uint8input import with_uint8_input

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
OPSET = 17


def load_run(run: Path) -> tuple[ProbabilityHead, dict[str, Any]]:
    """The best network of a run folder (eval mode, CPU) and its metrics.json."""
    run = Path(run)
    metrics_path, best_path = run / "metrics.json", run / "best.pt"
    if not metrics_path.is_file() or not best_path.is_file():
        raise FileNotFoundError(f"{run} is not a finished training run (no metrics.json/best.pt)")
    metrics = json.loads(metrics_path.read_text())
    network = build_model(metrics["arch"], float(metrics["width"]))
    network.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["model"])
    # Runs made before calibration have neither number: the plain softmax.
    temperature = float(metrics.get("temperature", 1.0))
    bias = float(metrics.get("calibration_bias", 0.0))
    return ProbabilityHead(network, temperature, bias).eval(), metrics


def model_version(model: torch.nn.Module, metrics: dict[str, Any]) -> str:
    """Architecture, balance and a digest of the weights: unique per trained model, reproducible."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return f"idc-{metrics['arch']}-w{metrics['width']:g}-{metrics['balance']}-{digest.hexdigest()[:10]}"


def split_identity(split: dict[str, Any]) -> dict[str, Any]:
    """The split as a model's identity states it. In a cross-validation fold, "test" is the fold's
    held-out patients (`held_out`), and the patients the whole comparison set aside are `test`."""
    if "set_aside_test" not in split:
        return split
    return {
        "method": split["method"],
        "train": split["train"],
        "val": split["val"],
        "held_out": split["test"],
        "test": split["set_aside_test"],
    }


def identity(version: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """What the model is and what it saw; `models register` reads test figures from here (for a
    cross-validation fold: its held-out patients, until `compare` scores the set-aside test)."""
    test = metrics["test"]["overall"]
    return {
        "version": version,
        "architecture": metrics["arch"],
        "width": metrics["width"],
        "balance": metrics["balance"],
        "augment": metrics.get("augment"),
        "temperature": metrics.get("temperature", 1.0),
        "calibration_bias": metrics.get("calibration_bias", 0.0),
        "threshold_rule": metrics["threshold_rule"],
        "min_sensitivity": metrics.get("min_sensitivity"),
        "best_epoch": metrics["best_epoch"],
        "trained_on": {
            # Counts, not the folder: the file travels to machines where that path means nothing.
            "data": {k: v for k, v in metrics["data"].items() if k != "root"},
            "dataset": "Breast Histopathology Images (Janowczyk & Madabhushi 2016)",
            "split": split_identity(metrics["split"]),
        },
        "val_metrics": metrics["val"]["overall"],
        "test_metrics": test,
        "confusion": {k: test[k] for k in ("tp", "fp", "tn", "fn")},
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def set_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)


def to_onnx(
    model: torch.nn.Module,
    path: Path,
    spec: TileSpec,
    ident: dict[str, Any],
    stain: StainReference | None = None,
) -> None:
    dummy = torch.zeros(2, 3, spec.tile_size, spec.tile_size)
    # The TorchScript exporter, deliberately: these graphs have no control flow, it needs no
    # extra package (the torch.export-based one needs onnxscript), and its dynamic batch axis
    # is proven by the parity check. torch 2.14 flags it and its internals as deprecated.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    # The network takes the float input `spec` describes; the file takes uint8 tiles and
    # normalises them in its graph, so the worker does no float work in Python.
    proto = with_uint8_input(onnx.load(str(path)), spec)
    contract = replace(spec, input_format=UINT8_NHWC)
    entries = {**contract.to_metadata(), IDENTITY_KEY: json.dumps(ident, sort_keys=True)}
    if stain is not None:
        entries.update(stain.to_metadata())
    set_metadata(proto, entries)
    proto.doc_string = f"idcscan IDC classifier {ident['version']}"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


@torch.inference_mode()
def torch_probabilities(model: torch.nn.Module, tiles: np.ndarray, spec: TileSpec) -> np.ndarray:
    """The torch network's probabilities; it takes the normalised float input, whatever the
    exported file takes."""
    return np.concatenate(
        [
            model(torch.from_numpy(normalise(tiles[i : i + 256], spec))).numpy()
            for i in range(0, len(tiles), 256)
        ]
    )


def quantize_int8(source: Path, target: Path, tiles: np.ndarray, spec: TileSpec) -> None:
    """Static QDQ INT8 quantisation calibrated on `tiles`; the metadata is carried over. A model
    that takes uint8 tiles reads them as its first quantized tensor (`integerinput`)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [
                    {INPUT_NAME: to_model_input(tiles[i : i + 64], spec)}
                    for i in range(0, min(len(tiles), 512), 64)
                ]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    prepared = target.with_suffix(".prep.onnx")
    quant_pre_process(str(source), str(prepared))
    quantize_static(
        str(prepared),
        str(target),
        Calibration(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options=quant_overrides(spec),
    )
    prepared.unlink()
    original = onnx.load(str(source))
    quantized = onnx.load(str(target))
    if quant_overrides(spec) and not feed_uint8_tiles(quantized, spec):
        log.warning("%s: INT8 keeps the float normalisation of its tiles", source.name)
    set_metadata(quantized, {p.key: p.value for p in original.metadata_props})
    onnx.save(quantized, str(target))


def export_graph(
    model: torch.nn.Module,
    out: Path,
    spec: TileSpec,
    ident: dict[str, Any],
    tiles: np.ndarray,
    labels: np.ndarray | None = None,
    int8: bool = False,
    stain: StainReference | None = None,
) -> dict[str, Any]:
    """Export `model` (tiles in, IDC probability out) to `out`, check it against torch on
    `tiles`; maybe add an INT8 variant. `stain`: the training patches' stain reference."""
    if len(tiles) == 0:
        raise ValueError("the parity check needs real patches")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    to_onnx(model, out, spec, ident, stain)

    expected = torch_probabilities(model, tiles, spec)
    got = OnnxModel(out, provider="cpu").predict(tiles)
    difference = float(np.max(np.abs(expected - got)))
    if difference > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX and torch disagree by {difference:.2e} > {PARITY_TOLERANCE}")
    summary: dict[str, Any] = {
        "onnx": str(out),
        "version": spec.model_version,
        "bytes": out.stat().st_size,
        "parity_patches": len(tiles),
        "parity_max_abs_difference": difference,
        "threshold": spec.threshold,
    }
    if int8:
        target = out.with_name(out.stem + "-int8.onnx")
        quantize_int8(out, target, tiles, OnnxModel(out, provider="cpu").spec)
        quantized = OnnxModel(target, provider="cpu").predict(tiles)
        summary["int8"] = {
            "onnx": str(target),
            "bytes": target.stat().st_size,
            "max_abs_difference": float(np.max(np.abs(quantized - got))),
        }
        if labels is not None:
            full = Confusion.at_threshold(labels, got, spec.threshold).accuracy
            small = Confusion.at_threshold(labels, quantized, spec.threshold).accuracy
            summary["int8"].update(
                accuracy_fp32=full, accuracy_int8=small, accuracy_change=small - full
            )
    log.info("exported %s", summary)
    return summary


def export_run(
    run: Path,
    out: Path,
    tiles: np.ndarray,
    labels: np.ndarray | None = None,
    int8: bool = False,
    stain: StainReference | None = None,
) -> dict[str, Any]:
    """Export a run's best model to `out`, check it against torch on `tiles`; maybe add INT8.
    `stain`: the stain reference of the patches it trained on."""
    model, metrics = load_run(run)
    version = model_version(model, metrics)
    spec = run_spec(metrics, version)
    return export_graph(model, out, spec, identity(version, metrics), tiles, labels, int8, stain)


def run_spec(metrics: dict[str, Any], version: str, threshold: float | None = None) -> TileSpec:
    """The tile contract of a model from a training run (its threshold unless one is given)."""
    return TileSpec(
        threshold=float(metrics["threshold"] if threshold is None else threshold),
        model_version=version,
        extra={"architecture": metrics["arch"], "balance": metrics["balance"]},
    )


def update_identity(path: Path, entries: dict[str, Any]) -> None:
    """Add `entries` to an exported model's identity (figures known only after export)."""
    proto = onnx.load(str(path))
    current = {p.key: p.value for p in proto.metadata_props}
    ident = {**json.loads(current.get(IDENTITY_KEY, "{}")), **entries}
    set_metadata(proto, {IDENTITY_KEY: json.dumps(ident, sort_keys=True)})
    onnx.save(proto, str(path))
