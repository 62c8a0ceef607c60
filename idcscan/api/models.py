"""The model registry over HTTP: list, read, and (admin only) activate a model."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app
from spectree import Response as Resp
from sqlalchemy import select, update

from idcscan.api.audit import audit
from idcscan.api.auth import admin_required, caller
from idcscan.api.jobs import PROBLEMS
from idcscan.api.problems import not_found
from idcscan.api.schemas import ID_RULE, ModelList, ModelOut, ProblemOut, aware, spec
from idcscan.core.db import Model, transaction

bp = Blueprint("models", __name__, url_prefix="/v1")


def model_out(model: Model) -> ModelOut:
    return ModelOut(
        id=model.id,
        version=model.version,
        architecture=model.architecture,
        onnx_sha256=model.onnx_sha256,
        threshold=model.threshold,
        tile_spec=model.tile_spec,
        test_metrics=model.test_metrics,
        confusion=model.confusion,
        variants=sorted(model.variants or {}),
        active=model.active,
        created_at=aware(model.created_at),
    )


@bp.get("/models")
@spec.validate(resp=Resp(HTTP_200=ModelList, **PROBLEMS), tags=["models"])
def list_models() -> Any:
    """Every registered model with its test metrics and confusion matrix, newest first."""
    with current_app.extensions["idcscan.db"]() as session:
        models = session.scalars(select(Model).order_by(Model.id.desc()))
        return ModelList(models=[model_out(m) for m in models])


@bp.get(f"/models/<{ID_RULE}:model_id>")
@spec.validate(resp=Resp(HTTP_200=ModelOut, **PROBLEMS), tags=["models"])
def get_model(model_id: int) -> Any:
    """One model of the registry."""
    with current_app.extensions["idcscan.db"]() as session:
        model = session.get(Model, model_id)
        if model is None:
            raise not_found("model")
        return model_out(model)


@bp.post(f"/models/<{ID_RULE}:model_id>/activate")
@admin_required
@spec.validate(resp=Resp(HTTP_200=ModelOut, HTTP_403=ProblemOut, **PROBLEMS), tags=["models"])
def activate_model(model_id: int) -> Any:
    """Make this model the one new jobs use (admin key). Running jobs keep theirs."""
    with transaction(current_app.extensions["idcscan.db"]) as session:
        model = session.get(Model, model_id, with_for_update=True)
        if model is None:
            raise not_found("model")
        # Deactivate first: the partial unique index allows one active model at any instant.
        session.execute(
            update(Model).where(Model.active, Model.id != model_id).values(active=False)
        )
        model.active = True
        audit(session, caller().id, "model.activate", "model", model.id, version=model.version)
    return model_out(model)
