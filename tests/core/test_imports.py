"""Scoring must stay light: importing core (and the command line) never imports torch, Flask or Celery."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(statement: str) -> set[str]:
    code = f"{statement}\nimport sys\nprint(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_core_imports_no_framework() -> None:
    loaded = _modules_after(
        "import idcscan.core.db, idcscan.core.tiles, idcscan.core.settings, "
        "idcscan.core.metrics, idcscan.core.patches, idcscan.core.onnxmodel"
    )
    assert not {"torch", "flask", "celery", "onnxruntime"} & loaded


def test_command_line_parser_imports_no_heavy_part() -> None:
    loaded = _modules_after("from idcscan.cli import build_parser; build_parser()")
    assert not {"torch", "flask", "celery", "onnxruntime", "torchvision"} & loaded
