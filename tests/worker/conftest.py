"""Worker fixtures: a tiny ONNX model with the tile contract, slides made on the fly, job rows."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from idcscan.core.tiles import TileSpec
from tests.conftest import SAMPLE_PATIENTS
from tests.worker.models import build_model

SHARED_WSI = Path("/work/shared/data/wsi")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture(scope="session")
def assembled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Patient 8916 reassembled as a pyramidal TIFF (with .geojson and .tiles.csv beside it)."""
    from idcscan.worker.assemble import assemble

    out = tmp_path_factory.mktemp("assembled") / "8916.tiff"
    assemble(SAMPLE_PATIENTS / "8916", out)
    return out


@pytest.fixture
def patient_zip(tmp_path: Path) -> Path:
    base = tmp_path / "8916"
    return Path(shutil.make_archive(str(base), "zip", SAMPLE_PATIENTS, "8916"))


JobFactory = Callable[..., uuid.UUID]


@pytest.fixture
def make_job(tiny_model: Path) -> Iterator[Callable[[str], JobFactory]]:
    """make_job(database_url)(slide_uri, mpp=None, labels_uri=None, slide_sha256=None) -> a committed
    queued job id; an uploaded slide has its SHA-256, a `slide_uri` none."""
    from idcscan.core.db import Client, Job, Model, make_engine, make_sessionmaker, transaction

    engines = []

    def for_database(url: str) -> JobFactory:
        engine = make_engine(url)
        engines.append(engine)
        sessions = make_sessionmaker(engine)

        def make(
            slide_uri: str,
            mpp: float | None = None,
            labels_uri: str | None = None,
            slide_sha256: str | None = None,
        ) -> uuid.UUID:
            with transaction(sessions) as session:
                client = session.query(Client).filter_by(name="hospital").one_or_none()
                if client is None:
                    client = Client(name="hospital", key_prefix="abc", key_hash="x" * 64)
                    session.add(client)
                model = session.query(Model).filter_by(version="test-tiny").one_or_none()
                if model is None:
                    spec = TileSpec(model_version="test-tiny")
                    model = Model(
                        version="test-tiny",
                        architecture="tiny",
                        onnx_sha256="0" * 64,
                        location=str(tiny_model),
                        tile_spec=json_spec(spec),
                        threshold=spec.threshold,
                        active=True,
                    )
                    session.add(model)
                session.flush()
                job = Job(
                    client_id=client.id,
                    model_id=model.id,
                    slide_uri=slide_uri,
                    slide_sha256=slide_sha256,
                    mpp=mpp,
                    labels_uri=labels_uri,
                )
                session.add(job)
                session.flush()
                job_id = job.id
            return job_id

        return make

    yield for_database
    for engine in engines:
        engine.dispose()


def json_spec(spec: TileSpec) -> dict[str, object]:
    return dict(json.loads(spec.to_json()))
