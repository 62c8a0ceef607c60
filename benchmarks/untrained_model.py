"""An untrained network of the trainer's, exported with the tile contract: for speed only.

    python -m benchmarks.untrained_model --arch resnet18 --width 1 --out var/bench/resnet18-w1.onnx

Inference costs the same whatever the weights, so a network that the trainer would build, with
random weights, measures what a full-width model costs a worker (`benchmarks.full_slide --model`,
`benchmarks.score_throughput --model`) without hours of training. Its probabilities mean nothing:
its identity says so. Needs the `train` extra (torch).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from idcscan.core.tiles import TileSpec
from idcscan.trainer.export import to_onnx
from idcscan.trainer.models import ProbabilityHead, build_model
from idcscan.trainer.options import ARCHITECTURES


def export_untrained(arch: str, width: float, out: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    network = build_model(arch, width).eval()
    version = f"untrained-{arch}-w{width:g}"
    spec = TileSpec(model_version=version, extra={"architecture": arch, "balance": "none"})
    out.parent.mkdir(parents=True, exist_ok=True)
    ident = {"version": version, "architecture": arch, "width": width, "untrained": True}
    to_onnx(ProbabilityHead(network), out, spec, ident)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18", choices=ARCHITECTURES)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(export_untrained(args.arch, args.width, args.out))


if __name__ == "__main__":
    main()
