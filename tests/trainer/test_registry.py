"""`idcscan models register`: the exported model, its figures and confusion matrix in the database."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from idcscan.cli import main as cli
from idcscan.core import db

pytestmark = pytest.mark.train


def models_in(url: str) -> list[db.Model]:
    engine = db.make_engine(url)
    try:
        with db.make_sessionmaker(engine)() as session:
            return list(session.scalars(select(db.Model).order_by(db.Model.id)))
    finally:
        engine.dispose()


def test_register_records_figures_and_activates_one(
    migrated_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    exported_model: tuple[Path, dict[str, Any]],
    trained_run: Path,
) -> None:
    import json

    monkeypatch.setenv("IDCSCAN_DATABASE_URL", migrated_url)
    path = tmp_path / "a.onnx"
    shutil.copy(exported_model[0], path)
    assert cli(["models", "register", str(path), "--activate"]) == 0
    assert cli(["models", "register", str(path)]) == 0  # the same file again: no new row
    (model,) = models_in(migrated_url)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    test = metrics["test"]["overall"]
    assert model.active and model.architecture == "resnet18"
    assert model.threshold == pytest.approx(metrics["threshold"])
    assert model.confusion == {k: test[k] for k in ("tp", "fp", "tn", "fn")}
    assert model.test_metrics["balanced_accuracy"] == pytest.approx(test["balanced_accuracy"])
    assert model.tile_spec["mpp"] == 4.0

    # A second model (here: the same graph under another version) activated: the first is not.
    second = tmp_path / "b.onnx"
    relabel(path, second, "another-version")
    assert cli(["models", "register", str(second), "--activate"]) == 0
    first, other = models_in(migrated_url)
    assert (first.active, other.active) == (False, True)
    assert other.version == "another-version"

    # Another file claiming a registered version is refused with a one-line error.
    third = tmp_path / "c.onnx"
    relabel(path, third, "another-version", doc="a different file")
    assert cli(["models", "register", str(third)]) == 2
    assert len(models_in(migrated_url)) == 2


def relabel(source: Path, target: Path, version: str, doc: str = "") -> None:
    """Copy an exported model under another model version (its tile contract rewritten)."""
    from dataclasses import replace

    import onnx

    from idcscan.core.tiles import TileSpec
    from idcscan.trainer.export import set_metadata

    model = onnx.load(str(source))
    metadata = {p.key: p.value for p in model.metadata_props}
    spec = TileSpec.from_metadata(metadata)
    set_metadata(model, replace(spec, model_version=version).to_metadata())
    model.doc_string = doc or model.doc_string
    onnx.save(model, str(target))
