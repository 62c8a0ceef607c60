"""Bare onnxruntime ceilings on a CUDA GPU, for `benchmarks/gpu_check.sh`.

    python -m benchmarks.gpu_ceilings probe [--model M.onnx]
    python -m benchmarks.gpu_ceilings ceilings [--model M.onnx] [--tiles 32768]

`probe` fails (exit 1, one line) unless a session of the model really runs on the CUDA execution
provider: onnxruntime quietly falls back to the CPU when its CUDA or cuDNN libraries do not load,
and a GPU figure measured on the CPU would be a lie. `ceilings` measures tiles/s on real tissue
(the sample patients' patches, preprocessed, in memory): FP32 with host arrays (a copy in and out
per batch, as the worker runs it), FP32 with IO binding (input already on the GPU: the card's own
ceiling), and FP16 with IO binding, at the worker's batch and a large one: the model's shipped
FP16 variant (`idcscan models variants`, what a CUDA worker runs) when it lies beside the model,
else onnxruntime's float16 conversion made here (float32 input and output kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CUDA = "CUDAExecutionProvider"


def cuda_session(path: Path) -> Any:
    """An onnxruntime session on CUDA alone, or SystemExit with the reason."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from their pip wheels, where installed
        ort.preload_dlls()
    if CUDA not in ort.get_available_providers():
        raise SystemExit(
            f"gpu_check: onnxruntime {ort.__version__} has no CUDA execution provider "
            f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
        )
    session = ort.InferenceSession(str(path), providers=[CUDA])
    if session.get_providers()[0] != CUDA:
        raise SystemExit(
            "gpu_check: the CUDA execution provider did not load (CUDA or cuDNN libraries "
            "missing?); refusing to measure the CPU"
        )
    return session


def tiles(count: int, model: Path) -> np.ndarray:
    """`count` real tissue tiles, preprocessed for `model` (the sample patches, repeated)."""
    from benchmarks.full_slide import real_patches
    from idcscan.core.onnxmodel import read_manifest
    from idcscan.core.tiles import to_model_input

    patches = real_patches()
    repeated = patches[np.arange(count) % len(patches)]
    return to_model_input(repeated, read_manifest(model).spec)


def _model_path(requested: Path | None = None) -> Path:
    from idcscan.core.onnxmodel import reference_model

    return requested or reference_model()


def rate_host(session: Any, data: np.ndarray, batch: int, repeats: int) -> float:
    """Tiles/s with numpy input and output: one copy to the card and back per batch."""
    name = session.get_inputs()[0].name
    session.run(None, {name: data[:batch]})
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(0, len(data), batch):
            session.run(None, {name: data[i : i + batch]})
    return repeats * len(data) / (time.perf_counter() - start)


def rate_bound(session: Any, data: np.ndarray, batch: int, repeats: int) -> float:
    """Tiles/s with every batch already on the card and the output left there (IO binding)."""
    import onnxruntime as ort

    name = session.get_inputs()[0].name
    output = session.get_outputs()[0].name
    on_card = [
        ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(data[i : i + batch]), "cuda", 0)
        for i in range(0, len(data) - batch + 1, batch)
    ]
    binding = session.io_binding()
    binding.bind_output(output, "cuda")
    binding.bind_ortvalue_input(name, on_card[0])
    session.run_with_iobinding(binding)
    start = time.perf_counter()
    for _ in range(repeats):
        for value in on_card:
            binding.bind_ortvalue_input(name, value)
            session.run_with_iobinding(binding)
    binding.copy_outputs_to_cpu()  # waits for the last batch
    return repeats * len(on_card) * batch / (time.perf_counter() - start)


def float16_model(path: Path, out: Path) -> Path | str:
    """The model in FP16 (float32 input and output kept), or why it could not be made."""
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        return f"skipped: {exc.name} is not installed"
    try:
        model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    except Exception as exc:  # an operator the converter does not handle: say so, go on
        return f"skipped: the float16 conversion failed ({type(exc).__name__}: {exc})"
    onnx.save(model, str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("probe", "ceilings"))
    parser.add_argument("--model", type=Path)
    parser.add_argument("--tiles", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = _model_path(args.model)
    session = cuda_session(path)
    if args.what == "probe":
        import onnxruntime as ort

        print(f"onnxruntime {ort.__version__}: {path.name} runs on {session.get_providers()[0]}")
        return
    data = tiles(args.tiles, path)
    figures: dict[str, Any] = {"model": path.name, "tiles": len(data)}
    for batch in (256, 2048):
        figures[f"fp32_host_b{batch}"] = round(rate_host(session, data, batch, args.repeats))
        figures[f"fp32_iobinding_b{batch}"] = round(rate_bound(session, data, batch, args.repeats))
    with tempfile.TemporaryDirectory() as folder:
        from idcscan.core.variants import variant_path

        shipped = variant_path(path, "fp16")
        half = shipped if shipped.is_file() else float16_model(path, Path(folder) / "fp16.onnx")
        figures["fp16_model"] = half.name if isinstance(half, Path) else None
        if isinstance(half, str):
            figures["fp16"] = half
        else:
            session16 = cuda_session(half)
            for batch in (256, 2048):
                figures[f"fp16_iobinding_b{batch}"] = round(
                    rate_bound(session16, data, batch, args.repeats)
                )
    base = figures["fp32_iobinding_b2048"]
    figures["ratios_to_fp32_iobinding_b2048"] = {
        key: round(value / base, 3)
        for key, value in figures.items()
        if isinstance(value, int) and key != "tiles"
    }
    print(json.dumps(figures, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
