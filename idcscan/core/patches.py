"""The Breast Histopathology Images layout: `<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png`.

X and Y are the patch's 1-based top-left pixel on the patient's slide at the dataset's scale
(~4 um/px); they step by 50. The trainer and the patch-folder slide reader share this parser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(
    r"^(?P<patient>[A-Za-z0-9-]+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<label>[01])\.png$"
)


@dataclass(frozen=True, order=True)
class PatchName:
    patient: str
    x: int
    """0-based left pixel on the patient's slide (the file name's X minus one)."""
    y: int
    """0-based top pixel on the patient's slide (the file name's Y minus one)."""
    label: int
    """1 = invasive ductal carcinoma, 0 = not."""


def parse_patch_name(name: str) -> PatchName:
    """Parse a dataset file name (a bare name or a path); a clear ValueError when it is not one."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    match = _NAME.match(base)
    if match is None:
        raise ValueError(
            f"not a dataset patch name (<patient>_idx5_x<X>_y<Y>_class<0|1>.png): {base!r}"
        )
    x, y = int(match["x"]), int(match["y"])
    if x < 1 or y < 1:
        raise ValueError(f"patch coordinates are 1-based, got x={x} y={y} in {base!r}")
    return PatchName(match["patient"], x - 1, y - 1, int(match["label"]))


def iter_patches(patient_dir: Path) -> Iterator[tuple[Path, PatchName]]:
    """Every patch of one patient folder, in a stable order, checked against its class folder."""
    for class_dir in sorted(p for p in patient_dir.iterdir() if p.is_dir()):
        if class_dir.name not in ("0", "1"):
            continue
        for path in sorted(class_dir.glob("*.png")):
            patch = parse_patch_name(path.name)
            if str(patch.label) != class_dir.name:
                raise ValueError(
                    f"{path.name} is labelled {patch.label} but lies in {class_dir.name}/"
                )
            yield path, patch


def patient_dirs(root: Path) -> list[Path]:
    """Patient folders under a dataset root: folders holding a `0/` or `1/` class folder."""
    if not root.is_dir():
        raise FileNotFoundError(f"no such dataset folder: {root}")
    return sorted(
        p for p in root.iterdir() if p.is_dir() and ((p / "0").is_dir() or (p / "1").is_dir())
    )
