"""The README's first command: `idcscan demo`, as shipped (the reference model, embedded mode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.conftest import KOMBU_NOLOAD
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@KOMBU_NOLOAD
def test_the_demo_runs_end_to_end_with_the_reference_model(tmp_path: Path) -> None:
    assert (ROOT / "idcscan" / "models" / "idc-reference.onnx").is_file()
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDCSCAN_")}
    done = subprocess.run(
        [sys.executable, "-m", "idcscan.cli", "demo", "--out", str(out)],
        env={**env, "COLUMNS": "120", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("patient-8916", "patient-9125", "CMU-1-Small-Region"):
        assert (out / name / "heatmap.png").read_bytes().startswith(b"\x89PNG")
        assert json.loads((out / name / "idc.geojson").read_text())["type"] == "FeatureCollection"
    # The worker ran the variant of its provider that ships beside the model, and says so.
    import onnxruntime

    from idcscan.core.onnxmodel import reference_model
    from idcscan.core.variants import present_variants

    on_cpu = "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
    shipped = present_variants(reference_model())
    wanted = "int8" if on_cpu else "fp16"
    variant = wanted if wanted in shipped else "fp32"
    for patient in ("patient-8916", "patient-9125"):
        result = json.loads((out / patient / "result.json").read_text())
        assert result["model_variant"] == variant, result
        assert result["slide_call"] == "idc", result  # both patients have IDC
        assert result["confusion"]["tp"] > 0
        assert result["in_distribution"] is True, result
    skin = json.loads((out / "CMU-1-Small-Region" / "result.json").read_text())
    # Not breast: its stain lies outside the training data's, so no IDC call is made on it.
    assert skin["in_distribution"] is False and skin["slide_call"] == "indeterminate", skin
    assert "unlike the training data" in done.stdout
    assert done.stdout.count("missed IDC tiles") == 2  # the two labelled patients
    assert "idc-resnet18" in done.stdout  # the reference model, not a stand-in
    assert "stopping the API and the worker" in done.stdout
