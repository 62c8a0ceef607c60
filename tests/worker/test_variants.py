"""The shipped precision variants (INT8 for CPU workers, FP16 for GPU workers) and which one a
worker runs: valid files with their figures, probabilities close to FP32's on the sample patients,
the variant of the worker's provider picked and recorded with the result, FP32 when forced.

Every figure comes from `OnnxModel.predict` on uint8 tiles, whatever the model's input format.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from idcscan.core import variants
from idcscan.core.db import Job, Model, SlideResult, make_engine, make_sessionmaker, transaction
from idcscan.core.onnxmodel import OnnxModel, file_sha256, reference_model
from idcscan.core.settings import Settings, get_settings
from idcscan.trainer.data import load_patches
from idcscan.worker.jobs import JobRunner
from idcscan.worker.modelcache import ModelCache
from tests.conftest import SAMPLE_PATIENTS

REFERENCE = reference_model()
SHIPPED = variants.present_variants(REFERENCE)

# Measured on the 779 sample patches: INT8 at most 0.041 from FP32 (mean 0.0049, 99.5% of the
# calls the same), FP16 at most 0.0031. The limits leave room for a re-made variant, not more.
TOLERANCE = {"int8": (0.1, 0.01, 0.98), "fp16": (0.01, 0.001, 0.995)}
"""precision -> (max |difference|, mean |difference|, share of tiles called alike)."""


@pytest.fixture(scope="module")
def sample_tiles() -> tuple[np.ndarray, np.ndarray]:
    patches = load_patches(SAMPLE_PATIENTS.parent / "idc")
    fp32 = OnnxModel(REFERENCE, provider="cpu", threads=1)
    return patches.tiles, fp32.predict(patches.tiles)


def test_fp16_ships_and_int8_only_with_its_figures() -> None:
    """FP16 always ships; INT8 only when `models variants` found it within the limits."""
    assert "fp16" in SHIPPED
    for precision in SHIPPED:
        path = variants.variant_path(REFERENCE, precision)
        onnx.checker.check_model(str(path))
        model = OnnxModel(path, provider="cpu", threads=1)
        fp32 = OnnxModel(REFERENCE, provider="cpu", threads=1)
        assert model.precision == precision and fp32.precision == "fp32"
        assert model.manifest.version == fp32.manifest.version
        # Made from the FP32 file as it ships: re-make them (`idcscan models variants`) whenever
        # it changes, or `models register` refuses them.
        assert model.manifest.identity["source_sha256"] == file_sha256(REFERENCE)
        assert model.spec == fp32.spec  # the same tile contract and threshold
        figures = model.manifest.identity["precision_figures"]
        assert figures["version"] == fp32.manifest.version
        assert figures["fp32"]["balanced_accuracy"] > 0.5
        assert figures[precision]["shipped"] is True
        assert figures[precision]["balanced_accuracy_change"] >= -0.005
    if "int8" in SHIPPED:
        int8 = OnnxModel(variants.variant_path(REFERENCE, "int8"), provider="cpu", threads=1)
        assert int8.manifest.identity["precision_figures"]["int8"]["speedup"] >= 1.7
        # Smaller than FP32 on disk: weights in 8 bits.
        assert variants.variant_path(REFERENCE, "int8").stat().st_size < REFERENCE.stat().st_size


@pytest.mark.parametrize("precision", SHIPPED)
def test_variant_probabilities_stay_close_to_fp32(
    precision: str, sample_tiles: tuple[np.ndarray, np.ndarray]
) -> None:
    tiles, expected = sample_tiles
    model = OnnxModel(variants.variant_path(REFERENCE, precision), provider="cpu", threads=1)
    got = model.predict(tiles)
    difference = np.abs(got - expected)
    most, mean, alike = TOLERANCE[precision]
    threshold = model.spec.threshold
    assert difference.max() <= most and difference.mean() <= mean
    assert np.mean((got >= threshold) == (expected >= threshold)) >= alike


def test_choice_per_provider() -> None:
    registered = ["int8", "fp16"]
    assert variants.choose("CPUExecutionProvider", "auto", registered) == "int8"
    assert variants.choose("CUDAExecutionProvider", "auto", registered) == "fp16"
    assert variants.choose("CUDAExecutionProvider", "fp32", registered) == "fp32"
    assert variants.choose("CPUExecutionProvider", "fp32", registered) == "fp32"
    # Not registered (never made, or INT8 did not earn its place): FP32.
    assert variants.choose("CPUExecutionProvider", "auto", ["fp16"]) == "fp32"
    assert variants.choose("CPUExecutionProvider", "auto", None) == "fp32"


def registered() -> dict[str, str]:
    return {p: str(variants.variant_path(REFERENCE, p)) for p in SHIPPED}


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_model_cache_loads_the_cpu_variant_unless_forced(tmp_path: Path, precision: str) -> None:
    settings = get_settings(data_dir=tmp_path, execution_provider="cpu", model_precision=precision)
    model = ModelCache(settings, threads=1).get(str(REFERENCE), registered())
    wanted = "int8" if precision == "auto" and "int8" in SHIPPED else "fp32"
    assert model.precision == wanted
    assert model.path == (
        variants.variant_path(REFERENCE, wanted) if wanted != "fp32" else REFERENCE
    )
    # A model registered without variants (before revision 0006): FP32.
    assert ModelCache(settings, threads=1).get(str(REFERENCE), None).precision == "fp32"


# -- a job records the variant that scored it (SQLite and PostgreSQL) ----------------------------


@pytest.fixture
def sessions(migrated_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(migrated_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_job_records_the_variant_it_ran(
    migrated_url: str,
    tmp_path: Path,
    sessions: sessionmaker[Session],
    make_job: Callable[[Settings], Callable[..., uuid.UUID]],
    precision: str,
) -> None:
    settings = get_settings(
        data_dir=tmp_path / "data",
        database_url=migrated_url,
        execution_provider="cpu",
        model_precision=precision,
        batch_size=256,
    )
    job_id = make_job(settings)(str(SAMPLE_PATIENTS / "8916"))
    with transaction(sessions) as session:  # its model becomes the reference, with its variants
        model = session.get_one(Model, session.get_one(Job, job_id).model_id)
        model.location, model.variants = str(REFERENCE), registered()
    runner = JobRunner(settings, sessions, ModelCache(settings, threads=1))
    assert runner.run(job_id) == "succeeded"
    with sessions() as session:
        result = session.get_one(SlideResult, job_id)
        stored = result.model_variant
    assert stored == ("int8" if precision == "auto" and "int8" in SHIPPED else "fp32")
