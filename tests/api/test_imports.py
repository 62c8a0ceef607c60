"""The API process never loads torch or onnxruntime, nor the worker's or the trainer's code (it
imports core, and the shared `idcscan.broker` to publish), and `idcscan --help` does not load Flask."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECK_APP = """
import sys
from idcscan.api.app import create_app
from idcscan.core.settings import get_settings
create_app(get_settings(data_dir=sys.argv[1]))
import idcscan.broker  # what publishing a job loads
heavy = sorted(m for m in ("torch", "onnxruntime", "onnx") if m in sys.modules)
assert not heavy, heavy
parts = sorted(m for m in sys.modules if m.startswith(("idcscan.worker", "idcscan.trainer")))
assert not parts, parts
"""

CHECK_COMMANDS = """
import sys
from idcscan.cli import build_parser
build_parser()
heavy = sorted(m for m in ("flask", "gunicorn", "sqlalchemy", "torch", "onnxruntime") if m in sys.modules)
assert not heavy, heavy
"""


def test_the_api_imports_neither_torch_nor_onnxruntime(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", CHECK_APP, str(tmp_path)], check=True, capture_output=True
    )


def test_the_command_line_stays_light() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK_COMMANDS], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
