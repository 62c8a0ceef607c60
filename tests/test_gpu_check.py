"""benchmarks/gpu_check.sh on a machine without a usable CUDA GPU: it stops at once, exit 1, with
one line saying why, and never measures the CPU in the GPU's place."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run_check(path: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": path,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT),
        "GPU_CHECK_INSTALL": "0",  # never touch the test's environment
        "IDCSCAN_DATA_DIR": str(tmp_path / "data"),
    }
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )


def without_nvidia_smi() -> str:
    """This process's PATH less every folder that holds an nvidia-smi."""
    folders = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(f for f in folders if not (Path(f) / "nvidia-smi").exists())


def test_no_gpu_fails_at_once_with_the_reason(tmp_path: Path) -> None:
    done = run_check(without_nvidia_smi(), tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == "gpu_check: no NVIDIA GPU here (nvidia-smi not found)"
    assert "tiles/s" not in done.stdout and "ceilings" not in done.stdout


def test_a_card_without_cuda_onnxruntime_is_refused_not_measured_on_the_cpu(
    tmp_path: Path,
) -> None:
    """A card is there (an nvidia-smi that names one: no real GPU can exist on this machine) but
    onnxruntime has no CUDA provider and may not be installed: the check refuses to go on."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has a CUDA provider: this is the CPU machine's test")
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'Test Card, 1024 MiB, 0.0'\n")
    smi.chmod(0o755)
    done = run_check(f"{fake}{os.pathsep}{without_nvidia_smi()}", tmp_path)
    assert done.returncode == 1
    assert "card: Test Card" in done.stdout
    (last,) = done.stderr.strip().splitlines()[-1:]
    assert last.startswith("gpu_check: onnxruntime ") and "no CUDA execution provider" in last
    assert "tiles/s" not in done.stdout and "ceilings" not in done.stdout
