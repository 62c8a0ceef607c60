"""Training and evaluation throughput (patches/s) of each architecture on this machine.

    python benchmarks/train_throughput.py [--data samples/idc] [--width 0.25] [--threads 0]
    python benchmarks/train_throughput.py --device cuda --width 1   # a GPU host

Training: the trainer's own epoch (`idcscan.trainer.train.train_one_epoch`: augmentation in a
prefetch thread, forward, backward, AdamW step, one-cycle schedule; mixed precision on CUDA),
batches of `--batch-size`, after one warm-up epoch. Evaluation: the same network exported to
ONNX and run by onnxruntime through `OnnxModel.predict` (the shared preprocessing included), as
the worker and `idcscan evaluate` run it (CPU only), and by torch (eval preset, inference mode,
mixed precision on CUDA) for reference. Weights are freshly initialised: throughput does not
depend on their values.
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
from idcscan.trainer.data import PatchSet, load_patches
from idcscan.trainer.export import to_onnx
from idcscan.trainer.models import ProbabilityHead, build_model
from idcscan.trainer.options import ARCHITECTURES
from idcscan.trainer.train import pick_device, progress_bar, train_one_epoch, training_batches

ROOT = Path(__file__).resolve().parent.parent


def train_rate(
    arch: str, width: float, patches: PatchSet, batch: int, steps: int, device: torch.device
) -> float:
    """Patches/s of the trainer's epoch over `steps` batches, after a warm-up epoch as long."""
    torch.manual_seed(0)
    model = build_model(arch, width).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=2 * steps)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    preset = ClassificationPresetTrain(TileSpec())
    criterion = torch.nn.CrossEntropyLoss()
    indices = np.random.default_rng(0).choice(len(patches), batch * steps, replace=True)
    rate = 0.0
    with progress_bar(disable=True) as progress:
        for epoch in range(2):  # the first warms up (cuDNN plans, allocator, thread pools)
            task = progress.add_task("train", total=len(indices), status="")
            batches = training_batches(
                patches, indices, batch, preset, 0, epoch, pin_memory=device.type == "cuda"
            )
            figures = train_one_epoch(
                model, criterion, optimizer, scheduler, batches, device, scaler, progress, task
            )
            rate = figures["patches_per_s"]
    return rate


@torch.inference_mode()
def torch_eval_rate(
    model: torch.nn.Module, tiles: np.ndarray, repeats: int, device: torch.device
) -> float:
    preset = ClassificationPresetEval(TileSpec())
    model.to(device)

    def run(part: np.ndarray) -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            model(preset(part).to(device)).cpu()  # .cpu(): wait for the device's result

    run(tiles[:256])
    started = time.perf_counter()
    for _ in range(repeats):
        for i in range(0, len(tiles), 256):
            run(tiles[i : i + 256])
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
    parser.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="cuda: mixed precision"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    patches = load_patches(Path(args.data))
    card = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{card}, "
        f"torch {torch.__version__} threads {torch.get_num_threads()}; {len(patches)} patches "
        f"from {args.data}; width {args.width}, batch {args.batch_size}, device {device}"
    )
    rows = []
    for arch in args.archs:
        train = train_rate(arch, args.width, patches, args.batch_size, args.train_steps, device)
        model = ProbabilityHead(build_model(arch, args.width)).eval()
        evaluate_torch = torch_eval_rate(model, patches.tiles, args.eval_repeats, device)
        model.cpu()
        # onnxruntime as the CPU worker runs it (the GPU worker's figures: benchmarks/score_*).
        evaluate_onnx = (
            onnx_eval_rate(model, arch, patches.tiles, args.eval_repeats, args.threads)
            if device.type == "cpu"
            else float("nan")
        )
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
