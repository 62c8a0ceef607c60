"""`idcscan evaluate`, `idcscan models register` and the trainer's command module never import torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, SAMPLE_PATIENTS

NO_TORCH = "import sys; assert 'torch' not in sys.modules, 'torch was imported'"


def run_python(code: str, **env: str) -> None:
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
    )


def test_command_module_is_light() -> None:
    run_python(
        f"import idcscan.trainer.commands; from idcscan.cli import build_parser; "
        f"build_parser(); {NO_TORCH}"
    )


def test_evaluate_and_register_run_without_torch(
    exported_model: tuple[Path, Any], tmp_path: Path
) -> None:
    model = exported_model[0]
    code = (
        "from idcscan.cli import main; "
        f"assert main(['evaluate', '--model', {str(model)!r}, '--data', "
        f"{str(SAMPLE_PATIENTS)!r}, '--json']) == 0; "
        f"assert main(['models', 'register', {str(model)!r}]) == 0; {NO_TORCH}"
    )
    run_python(code, IDCSCAN_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")


def test_stain_reference_runs_without_torch(tiny_dataset: Path, tmp_path: Path) -> None:
    from tests.worker.models import build_model

    model = build_model(tmp_path / "m.onnx")
    code = (
        "from idcscan.cli import main; "
        f"assert main(['models', 'stain-reference', {str(model)!r}, '--data', "
        f"{str(tiny_dataset)!r}]) == 0; {NO_TORCH}"
    )
    run_python(code)
