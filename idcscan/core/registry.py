"""The model registry: record an exported ONNX model with its figures and confusion matrix.

Torch-free: everything comes from the file's metadata (tile contract and identity) and its hash.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from idcscan.core import db
from idcscan.core.errors import InvalidInput
from idcscan.core.migrate import upgrade
from idcscan.core.onnxmodel import file_sha256, read_manifest
from idcscan.core.settings import get_settings
from idcscan.core.variants import present_variants, variant_path


def register_model(
    path: Path, activate: bool = False, database: str | None = None
) -> dict[str, Any]:
    """Insert the model (or find it by hash) and optionally make it the only active one. The
    precision variants beside it (`idcscan models variants`) are recorded with it."""
    path = Path(path).resolve()
    manifest = read_manifest(path)
    if not manifest.version:
        raise InvalidInput(f"{path} carries no model version; export it with `idcscan export`")
    if manifest.precision != "fp32":
        raise InvalidInput(
            f"{path} is the {manifest.precision} variant of a model: register its FP32 file, "
            "which brings its variants along"
        )
    digest = file_sha256(path)
    found = {p: str(variant_path(path, p)) for p in present_variants(path)}
    for precision, location in found.items():
        # Made from this very file: a variant left from an earlier model (another input format,
        # other weights under the same version) would score with the wrong graph.
        variant = read_manifest(Path(location))
        if variant.precision != precision or variant.identity.get("source_sha256") != digest:
            raise InvalidInput(
                f"{location} was not made from {path.name} as it is now; "
                "make it again with `idcscan models variants`"
            )
    url = database or get_settings().database
    upgrade(url)
    engine = db.make_engine(url)
    try:
        with db.transaction(db.make_sessionmaker(engine)) as session:
            model = session.scalars(select(db.Model).where(db.Model.onnx_sha256 == digest)).first()
            if model is None:
                if session.scalars(
                    select(db.Model).where(db.Model.version == manifest.version)
                ).first():
                    raise InvalidInput(
                        f"another file is registered as version {manifest.version}", code="conflict"
                    )
                model = db.Model(
                    version=manifest.version,
                    architecture=manifest.architecture,
                    onnx_sha256=digest,
                    location=str(path),
                    tile_spec=asdict(manifest.spec),
                    threshold=manifest.spec.threshold,
                    test_metrics=dict(manifest.identity.get("test_metrics", {})),
                    confusion=dict(manifest.identity.get("confusion", {})),
                    variants=found,
                    active=False,
                )
                session.add(model)
                session.flush()
            elif (model.variants or {}) != found:  # variants made or removed since
                model.variants = found
            if activate and not model.active:
                # Deactivate first: the partial unique index allows one active row at a time.
                session.execute(update(db.Model).where(db.Model.active).values(active=False))
                session.flush()
                model.active = True
            session.flush()
            return {
                "id": model.id,
                "version": model.version,
                "architecture": model.architecture,
                "active": model.active,
                "variants": sorted(found),
            }
    finally:
        engine.dispose()
