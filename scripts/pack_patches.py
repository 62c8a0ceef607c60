"""Carry an IDC patch dataset to a remote training machine in one small file, and unpack it there.

    python scripts/pack_patches.py pack DATA PACK.npz --max-per-patient 200 --quality 90
    python scripts/pack_patches.py unpack PACK.npz FOLDER

`pack` keeps every patient, draws at most `--max-per-patient` patches from each (class ratio
kept, seeded), and stores each patch as a JPEG (4:4:4, `--quality`) in one `.npz` with its
relative path. `unpack` writes them back in the dataset's layout
(`<patient>/<0|1>/<name>.png`, lossless PNG of the decoded JPEG), which every trainer command reads.

The JPEG step is lossy (quality 90: about 33 dB PSNR, 2.5 kB a patch, a third of the PNG): figures
trained and judged on an unpacked folder are figures on that folder, and are reported as such. Use
it where the link, not the GPU, is the limit (a lent GPU machine with a 64 MiB upload); on a host
that has the dataset, point the trainer at it directly.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from idcscan.core.patches import iter_patches, patient_dirs


def choose(labels: list[int], cap: int, rng: np.random.Generator) -> list[int]:
    """Indices of at most `cap` items, each class keeping its share (all of them under the cap)."""
    if cap <= 0 or len(labels) <= cap:
        return list(range(len(labels)))
    labels_array = np.asarray(labels)
    chosen: list[int] = []
    for label in (0, 1):
        members = np.flatnonzero(labels_array == label)
        take = round(cap * len(members) / len(labels))
        chosen += rng.choice(members, size=min(take, len(members)), replace=False).tolist()
    return sorted(chosen)


def pack(data: Path, target: Path, max_per_patient: int, quality: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    names: list[str] = []
    blobs: list[bytes] = []
    for folder in patient_dirs(data):
        patches = list(iter_patches(folder))
        for i in choose([p.label for _, p in patches], max_per_patient, rng):
            path, _ = patches[i]
            buffer = io.BytesIO()
            with Image.open(path) as image:
                image.convert("RGB").save(buffer, "JPEG", quality=quality, subsampling=0)
            names.append(path.relative_to(data).with_suffix("").as_posix())
            blobs.append(buffer.getvalue())
    if not blobs:
        raise ValueError(f"{data} holds no patches in the layout <patient>/<0|1>/*.png")
    offsets = np.cumsum([0, *map(len, blobs)])
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        target,
        names=np.asarray(names),
        offsets=offsets,
        data=np.frombuffer(b"".join(blobs), np.uint8),
    )
    print(f"{len(names)} patches, {offsets[-1] / 1e6:.1f} MB -> {target}")


def unpack(source: Path, folder: Path) -> None:
    with np.load(source) as packed:
        names, offsets, data = packed["names"], packed["offsets"], packed["data"]
    for i, name in enumerate(names):
        path = folder / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]].tobytes())) as image:
            image.save(path, compress_level=1)
    print(f"{len(names)} patches -> {folder}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("pack")
    p.add_argument("data", type=Path)
    p.add_argument("pack", type=Path)
    p.add_argument("--max-per-patient", type=int, default=0, help="0: every patch")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    u = verbs.add_parser("unpack")
    u.add_argument("pack", type=Path)
    u.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.verb == "pack":
            pack(args.data, args.pack, args.max_per_patient, args.quality, args.seed)
        else:
            unpack(args.pack, args.folder)
    except (OSError, ValueError) as exc:
        print(f"pack_patches: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
