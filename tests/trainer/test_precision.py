"""`idcscan models variants`: the INT8 and FP16 variants of any model, written beside it in one
go with their figures, calibrated on its training patients and judged on its validation patients;
`models register` records them with the FP32 model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from idcscan.cli import main as cli
from idcscan.core.onnxmodel import IDENTITY_KEY, OnnxModel, file_sha256
from idcscan.core.tiles import TileSpec
from idcscan.core.variants import variant_path
from idcscan.trainer.export import set_metadata
from tests.worker.models import build_model

pytestmark = pytest.mark.train

TRAIN, VAL = ["p1", "p2", "p3", "p4"], ["p5", "p6"]


def model_with_split(
    path: Path, split: dict[str, list[str]] | None, version: str = "tiny-split", seed: int = 0
) -> Path:
    """A small CNN with the tile contract, its identity naming its training/validation patients."""
    import onnx

    spec = TileSpec(model_version=version, threshold=0.5)
    build_model(path, spec, widths=(8, 16), seed=seed)
    proto = onnx.load(str(path))
    identity = {"version": version, "trained_on": {"split": split or {}}}
    set_metadata(proto, {IDENTITY_KEY: json.dumps(identity)})
    onnx.save(proto, str(path))
    return path


def test_variants_of_any_model_with_their_figures(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = model_with_split(tmp_path / "m.onnx", {"train": TRAIN, "val": VAL, "test": ["8916"]})
    before = file_sha256(model)
    assert (
        cli(["models", "variants", str(model), "--data", str(tiny_dataset), "--min-speedup", "0"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["calibration"]["patients"] == len(TRAIN)  # training patients, never validation
    assert report["validation"]["patients"] == len(VAL)
    assert file_sha256(model) == before  # the FP32 file, and so its registry identity, unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fp16.onnx", "m.int8.onnx", "m.onnx"]
    for precision in ("int8", "fp16"):
        variant = OnnxModel(variant_path(model, precision), provider="cpu", threads=1)
        assert variant.precision == precision and variant.manifest.version == "tiny-split"
        figures = variant.manifest.identity["precision_figures"]
        assert figures == report
        assert figures[precision]["shipped"] is True
        for name in ("balanced_accuracy", "max_abs_difference", "bytes"):
            assert name in figures[precision]
    assert report["int8"]["tiles_per_s"] > 0 and report["int8"]["speedup"] > 0


@pytest.mark.parametrize(
    ("mean", "reads_tiles"), [((0.5, 0.5, 0.5), True), ((0.4, 0.5, 0.6), False)]
)
def test_int8_of_a_uint8_model_reads_the_tiles_as_cut(
    tiny_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mean: tuple[float, float, float],
    reads_tiles: bool,
) -> None:
    """The normalisation inside a uint8 model's graph is the INT8 graph's first dequantization:
    no float prefix is left to run over every pixel. Channels normalised differently would need
    a per-channel zero point (which integer convolution does not take): they keep the prefix."""
    import onnx

    from idcscan.trainer.uint8input import convert

    model = model_with_split(tmp_path / "m.onnx", {"train": TRAIN, "val": VAL})
    proto = onnx.load(str(model))
    spec = TileSpec.from_metadata({p.key: p.value for p in proto.metadata_props})
    set_metadata(proto, replace(spec, mean=mean).to_metadata())
    onnx.save(convert(proto), str(model))
    argv = ["models", "variants", str(model), "--data", str(tiny_dataset), "--min-speedup", "0"]
    assert cli(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert abs(report["int8"]["balanced_accuracy_change"]) <= 0.05
    graph = onnx.load(str(variant_path(model, "int8"))).graph
    readers = [n.op_type for n in graph.node if "idcscan_nchw" in n.input]  # the uint8 NCHW tiles
    assert readers == (["DequantizeLinear"] if reads_tiles else ["Cast"])
    assert OnnxModel(variant_path(model, "int8"), provider="cpu").spec.mean == mean


def test_int8_not_shipped_outside_its_limits(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = model_with_split(tmp_path / "m.onnx", {"train": TRAIN, "val": VAL})
    argv = ["models", "variants", str(model), "--data", str(tiny_dataset), "--min-speedup", "0"]
    assert cli(argv) == 0 and variant_path(model, "int8").exists()
    capsys.readouterr()
    # Made again (as after the model changed), INT8 fails its limits: the earlier file goes too.
    # No variant can be 1000x faster: the INT8 file goes, its figures stay in the report.
    argv = ["models", "variants", str(model), "--data", str(tiny_dataset), "--min-speedup", "1000"]
    assert cli(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["int8"]["shipped"] is False and "speedup" in report["int8"]["not_shipped_because"]
    assert "INT8 not shipped" in captured.err
    assert not variant_path(model, "int8").exists()
    assert variant_path(model, "fp16").exists()
    assert (
        "int8"
        not in OnnxModel(variant_path(model, "fp16"), provider="cpu").manifest.identity[
            "precision_figures"
        ]["fp16"]
    )


def test_a_model_without_its_split_is_a_one_line_error(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = model_with_split(tmp_path / "m.onnx", None)
    assert cli(["models", "variants", str(model), "--data", str(tiny_dataset)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("idcscan: error:") and "split" in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # nothing half-written
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    assert cli(["models", "variants", str(tmp_path / "bad.onnx"), "--data", str(tiny_dataset)]) == 2
    assert "not an ONNX model" in capsys.readouterr().err


def test_register_records_the_variants(
    tiny_dataset: Path,
    tmp_path: Path,
    migrated_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.trainer.test_registry import models_in

    monkeypatch.setenv("IDCSCAN_DATABASE_URL", migrated_url)
    model = model_with_split(tmp_path / "m.onnx", {"train": TRAIN, "val": VAL})
    assert cli(["models", "register", str(model)]) == 0
    assert models_in(migrated_url)[0].variants == {}
    argv = ["models", "variants", str(model), "--data", str(tiny_dataset), "--min-speedup", "0"]
    assert cli(argv) == 0
    assert cli(["models", "register", str(model)]) == 0  # the same FP32 file: its variants added
    (row,) = models_in(migrated_url)
    assert row.variants == {p: str(variant_path(model, p)) for p in ("int8", "fp16")}
    # A variant is registered through its FP32 model, never on its own.
    assert cli(["models", "register", str(variant_path(model, "int8"))]) == 2
    assert len(models_in(migrated_url)) == 1
    # The FP32 file changed (another input format, say) and its variants were not made again:
    # refused, rather than workers scoring with a stale graph.
    other = model_with_split(tmp_path / "o.onnx", {"train": TRAIN, "val": VAL}, "tiny-o", seed=1)
    for precision in ("int8", "fp16"):
        variant_path(model, precision).replace(variant_path(other, precision))
    capsys.readouterr()
    assert cli(["models", "register", str(other)]) == 2
    assert "was not made from o.onnx" in capsys.readouterr().err
    assert len(models_in(migrated_url)) == 1


def test_int8_of_a_test_time_augmentation_graph_reads_the_tiles_too(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    """In a TTA graph onnxruntime's pre-processing moves the prefix's NHWC -> NCHW Transpose into
    the float arithmetic; the INT8 graph still reads the bytes, transposed as bytes."""
    import onnx
    import torch

    from idcscan.trainer.data import load_patches
    from idcscan.trainer.export import quantize_int8, to_onnx
    from idcscan.trainer.models import ProbabilityHead, ScoringGraph, build_model

    torch.manual_seed(0)
    network = ProbabilityHead(build_model("resnet18", 0.125).eval())
    spec = TileSpec(model_version="tta")
    model, int8 = tmp_path / "tta.onnx", tmp_path / "tta.int8.onnx"
    to_onnx(ScoringGraph([network], views=4).eval(), model, spec, {"version": "tta"})
    tiles = load_patches(tiny_dataset, TRAIN).tiles
    quantize_int8(model, int8, tiles, OnnxModel(model, provider="cpu").spec)
    graph = onnx.load(str(int8)).graph
    (transpose,) = [n for n in graph.node if "tiles" in n.input]
    assert transpose.op_type == "Transpose" and "Cast" not in {n.op_type for n in graph.node}
    assert [n.op_type for n in graph.node if transpose.output[0] in n.input] == ["DequantizeLinear"]
    expected = OnnxModel(model, provider="cpu").predict(tiles)
    assert np.abs(OnnxModel(int8, provider="cpu").predict(tiles) - expected).max() < 0.1


def test_variants_are_as_readable_as_their_model(tiny_dataset: Path, tmp_path: Path) -> None:
    """The command's private umask (files 0600, for patient data) would hide a variant from a
    worker that runs as another user and reads the FP32 file beside it."""
    import stat

    model = model_with_split(tmp_path / "m.onnx", {"train": TRAIN, "val": VAL})
    model.chmod(0o644)
    argv = ["models", "variants", str(model), "--data", str(tiny_dataset), "--min-speedup", "0"]
    assert cli(argv) == 0
    for precision in ("int8", "fp16"):
        assert stat.S_IMODE(variant_path(model, precision).stat().st_mode) == 0o644
