"""Worker fixtures: a tiny ONNX model with the tile contract, slides made on the fly, job rows."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from idcscan.core.db import Model
from idcscan.core.settings import Settings
from idcscan.core.storage import Storage
from tests import factories
from tests.conftest import SAMPLE_PATIENTS
from tests.worker.models import build_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture(scope="session")
def assembled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Patient 8916 reassembled as a pyramidal TIFF (with .geojson and .tiles.csv beside it)."""
    from idcscan.core.assemble import assemble

    out = tmp_path_factory.mktemp("assembled") / "8916.tiff"
    assemble(SAMPLE_PATIENTS / "8916", out)
    return out


@pytest.fixture
def patient_zip(tmp_path: Path) -> Path:
    base = tmp_path / "8916"
    return Path(shutil.make_archive(str(base), "zip", SAMPLE_PATIENTS, "8916"))


JobFactory = Callable[..., uuid.UUID]


def stored(storage: Storage, path: str | None, folder: str) -> str | None:
    """`path` copied into the service's storage, as the API stores what it accepts (a folder
    as a folder); its URI. A path that does not exist gives the URI of a blob that is absent."""
    if path is None:
        return None
    source = Path(path)
    key = f"{folder}/test/{uuid.uuid4().hex}/{source.name}"
    target = Path(storage.uri(key))
    if source.is_dir():
        shutil.copytree(source, target)
    elif source.exists():
        storage.put_file(source, key)
    return storage.uri(key)


def tiny_model_row(session: Session, tiny_model: Path) -> Model:
    """The tiny model's row, registered and active the first time."""
    model = session.query(Model).filter_by(version="test-tiny").one_or_none()
    if model is None:
        model = factories.model(
            session, "test-tiny", architecture="tiny", location=str(tiny_model), active=True
        )
    return model


@pytest.fixture
def make_job(tiny_model: Path) -> Iterator[Callable[[Settings], JobFactory]]:
    """make_job(settings)(slide, mpp=None, labels=None, slide_sha256=None) -> a committed queued
    job id, its slide and labels copied into storage first (the worker reads nothing else);
    `as_is={"slide"}` (or "labels") names that path itself, as a row written by hand or by an
    older API would. An uploaded slide has its SHA-256."""
    from idcscan.core.db import Client, make_engine, make_sessionmaker, transaction

    engines = []

    def for_settings(settings: Settings) -> JobFactory:
        engine = make_engine(settings.database)
        engines.append(engine)
        sessions = make_sessionmaker(engine)
        storage = Storage(settings.storage)

        def make(
            slide: str,
            mpp: float | None = None,
            labels: str | None = None,
            as_is: Collection[str] = (),
            slide_sha256: str | None = None,
        ) -> uuid.UUID:
            slide_uri = slide if "slide" in as_is else stored(storage, slide, "slides")
            labels_uri = labels if "labels" in as_is else stored(storage, labels, "labels")
            assert slide_uri is not None
            with transaction(sessions) as session:
                client = session.query(Client).filter_by(name="hospital").one_or_none()
                if client is None:
                    client, _key = factories.client(session, "hospital")
                job = factories.job(
                    session,
                    client,
                    tiny_model_row(session, tiny_model),
                    slide_uri=slide_uri,
                    slide_sha256=slide_sha256,
                    mpp=mpp,
                    labels_uri=labels_uri,
                )
                return job.id

        return make

    yield for_settings
    for engine in engines:
        engine.dispose()
