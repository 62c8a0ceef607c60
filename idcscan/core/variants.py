"""Precision variants of a model, and which one a worker runs for its execution provider.

A model `name.onnx` may have `name.int8.onnx` (static QDQ INT8, for CPU workers) and
`name.fp16.onnx` (FP16, for GPU workers) beside it, made by `idcscan models variants` with their
validation figures in their metadata. `idcscan models register` records the ones present; the
worker runs INT8 on the CPU provider and FP16 on CUDA when the registry has them, FP32 otherwise
or when `IDCSCAN_MODEL_PRECISION=fp32`.
"""

from __future__ import annotations

from pathlib import Path

FP32 = "fp32"
PRECISION_FOR_PROVIDER = {"CPUExecutionProvider": "int8", "CUDAExecutionProvider": "fp16"}
VARIANTS = tuple(PRECISION_FOR_PROVIDER.values())


def variant_path(model: Path, precision: str) -> Path:
    """Where `precision`'s variant of `model` lies: beside it, `<stem>.<precision>.onnx`."""
    model = Path(model)
    return model.with_name(f"{model.stem}.{precision}.onnx")


def present_variants(model: Path) -> list[str]:
    """The precisions whose variant file lies beside `model`."""
    return [p for p in VARIANTS if variant_path(model, p).is_file()]


def choose(provider: str, setting: str, registered: list[str] | None) -> str:
    """The precision a worker runs: its provider's variant if registered, unless forced to FP32."""
    if setting == FP32:
        return FP32
    wanted = PRECISION_FOR_PROVIDER.get(provider)
    return wanted if wanted and wanted in (registered or []) else FP32
