"""Training and evaluation throughput (patches/s) of each architecture on this machine.

    python benchmarks/train_throughput.py [--data samples/idc] [--width 0.25] [--threads 0]

Training: augmentation (training preset) + forward + backward + AdamW step, batches of
`--batch-size`. Evaluation: the same network exported to ONNX and run by onnxruntime through
`OnnxModel.predict` (the shared preprocessing included), as the worker and `idcscan evaluate`
run it, and by torch (eval preset, inference mode) for reference. Weights are freshly
initialised: throughput does not depend on their values.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from idcscan.core.onnxmodel import OnnxModel
from idcscan.core.tiles import TileSpec
from idcscan.trainer.augment import ClassificationPresetEval, ClassificationPresetTrain
from idcscan.trainer.data import load_patches
from idcscan.trainer.export import to_onnx
from idcscan.trainer.models import ProbabilityHead, build_model
from idcscan.trainer.options import ARCHITECTURES

ROOT = Path(__file__).resolve().parent.parent


def train_rate(
    arch: str, width: float, tiles: np.ndarray, labels: np.ndarray, batch: int, steps: int
) -> float:
    torch.manual_seed(0)
    model = build_model(arch, width).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    preset = ClassificationPresetTrain(TileSpec())
    generator = torch.Generator().manual_seed(0)
    criterion = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    seen, started = 0, 0.0
    for step in range(steps + 2):
        if step == 2:  # two warm-up steps
            seen, started = 0, time.perf_counter()
        index = np.sort(rng.choice(len(tiles), batch, replace=len(tiles) < batch))
        images, targets = preset(tiles[index], generator), torch.from_numpy(labels[index])
        loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += batch
    return seen / (time.perf_counter() - started)


@torch.inference_mode()
def torch_eval_rate(model: torch.nn.Module, tiles: np.ndarray, repeats: int) -> float:
    preset = ClassificationPresetEval(TileSpec())
    model(preset(tiles[:256]))
    started = time.perf_counter()
    for _ in range(repeats):
        for i in range(0, len(tiles), 256):
            model(preset(tiles[i : i + 256]))
    return repeats * len(tiles) / (time.perf_counter() - started)


def onnx_eval_rate(
    model: torch.nn.Module, arch: str, tiles: np.ndarray, repeats: int, threads: int
) -> float:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{arch}.onnx"
        to_onnx(
            model,
            path,
            TileSpec(model_version=f"bench-{arch}"),
            {"version": f"bench-{arch}", "architecture": arch},
        )
        session = OnnxModel(path, provider="cpu", threads=threads)
        session.predict(tiles[:256])
        started = time.perf_counter()
        for _ in range(repeats):
            session.predict(tiles, batch_size=256)
        return repeats * len(tiles) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "samples" / "idc"))
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--eval-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads (0: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    patches = load_patches(Path(args.data))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}; {len(patches)} patches from {args.data}; "
        f"width {args.width}, batch {args.batch_size}"
    )
    rows = []
    for arch in args.archs:
        train = train_rate(
            arch, args.width, patches.tiles, patches.labels, args.batch_size, args.train_steps
        )
        model = ProbabilityHead(build_model(arch, args.width)).eval()
        evaluate_torch = torch_eval_rate(model, patches.tiles, args.eval_repeats)
        evaluate_onnx = onnx_eval_rate(model, arch, patches.tiles, args.eval_repeats, args.threads)
        parameters = sum(p.numel() for p in model.parameters())
        rows.append((arch, parameters, train, evaluate_torch, evaluate_onnx))
        print(
            f"  {arch}: train {train:.0f}/s, eval torch {evaluate_torch:.0f}/s, "
            f"onnx {evaluate_onnx:.0f}/s",
            flush=True,
        )
    base = rows[0]
    print(
        f"\n| architecture | parameters | train patches/s | eval torch patches/s | "
        f"eval ONNX patches/s | train vs {base[0]} | ONNX eval vs {base[0]} |"
    )
    print("|---|---|---|---|---|---|---|")
    for arch, parameters, train, evaluate_torch, evaluate_onnx in rows:
        print(
            f"| {arch} | {parameters:,} | {train:.0f} | {evaluate_torch:.0f} | "
            f"{evaluate_onnx:.0f} | {train / base[2]:.2f}x | {evaluate_onnx / base[4]:.2f}x |"
        )


if __name__ == "__main__":
    main()
