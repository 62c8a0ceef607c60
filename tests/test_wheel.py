"""A wheel install is self-sufficient: the reference model is package data, so `idcscan score`
works in a fresh virtual environment with no checkout beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLE_SVS

pytestmark = pytest.mark.slow


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("IDCSCAN_", "PYTHON"))}
    done = subprocess.run(
        argv, cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def test_the_built_wheel_scores_a_slide_in_a_fresh_venv(tmp_path: Path) -> None:
    pytest.importorskip("hatchling", reason="the dev extra builds the wheel with hatchling")
    dist = tmp_path / "dist"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("idcscan-*.whl")

    # A fresh venv with the wheel alone in its site-packages. Its dependencies come from this
    # environment's site-packages through a .pth line; .pth files there (the editable install
    # of the checkout) are not read, so nothing of the checkout is importable.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        cwd=tmp_path,
    )
    site = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            cwd=tmp_path,
        ).stdout.strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    where = run(
        [
            str(python),
            "-c",
            "import idcscan, idcscan.core.onnxmodel as m; "
            "print(idcscan.__file__); print(m.reference_model())",
        ],
        cwd=tmp_path,
    ).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where
    assert Path(where[1]).is_file()

    out = tmp_path / "scored"
    done = run(
        [str(venv / "bin" / "idcscan"), "score", str(SAMPLE_SVS), "--out", str(out), "--json"],
        cwd=tmp_path,
        IDCSCAN_DATA_DIR=str(tmp_path / "data"),
        HOME=str(tmp_path),
    )
    summary = json.loads(done.stdout)
    assert summary["tissue_tiles"] > 0
    assert (out / "heatmap.png").read_bytes().startswith(b"\x89PNG")
