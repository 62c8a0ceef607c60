"""Fixtures of the API tests: a real HTTP server on a random port, over a migrated database.

`service` runs the app in werkzeug's threaded server (real sockets, real concurrency) against the
embedded SQLite database with its SQL broker, or PostgreSQL with Redis as the broker.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.serving import make_server

from idcscan.core.db import Job, Model, make_engine, make_sessionmaker, transaction
from idcscan.core.settings import Settings, get_settings
from tests import factories

# kombu's SQL transport (the embedded broker) declares its tables with lazy="noload", deprecated
# in SQLAlchemy 2.1: kombu's own warning, raised when the API first publishes to that broker.
KOMBU_NOLOAD = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning"
)


@dataclass
class Service:
    url: str
    settings: Settings
    db: sessionmaker[Session]
    model_id: int

    def new_client(self, name: str | None = None, admin: bool = False) -> tuple[int, str]:
        """A client's id and API key (`tests.factories.client`)."""
        with transaction(self.db) as session:
            client, key = factories.client(session, name, admin=admin)
            return client.id, key

    def add_client(self, name: str | None = None, admin: bool = False) -> str:
        return self.new_client(name, admin)[1]

    def request(
        self, method: str, path: str, key: str | None = None, **kwargs: Any
    ) -> requests.Response:
        timeout = 30 if method == "GET" else 60
        headers = _auth(key, kwargs)
        return requests.request(method, self.url + path, headers=headers, timeout=timeout, **kwargs)

    def get(self, path: str, key: str | None = None, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, key, **kwargs)

    def post(self, path: str, key: str | None = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, key, **kwargs)

    def submit(
        self, key: str, slide: Path, name: str = "slide.svs", **kwargs: Any
    ) -> requests.Response:
        data = kwargs.pop("data", {})
        files = {
            "slide": (name, slide.open("rb"), "application/octet-stream"),
            **kwargs.pop("files", {}),
        }
        try:
            return self.post("/v1/jobs", key, files=files, data=data, **kwargs)
        finally:
            files["slide"][1].close()

    def job_count(self) -> int:
        with self.db() as session:
            return int(session.scalar(select(func.count()).select_from(Job)) or 0)

    def published(self) -> list[bytes]:
        """The task messages waiting in the broker (Redis, or the embedded SQL broker)."""
        from idcscan.broker import QUEUE

        broker = self.settings.broker
        if broker.startswith("redis"):
            import redis

            with redis.Redis.from_url(broker) as client:
                return list(client.lrange(QUEUE, 0, -1))
        engine = make_engine(broker.removeprefix("sqla+"))
        try:
            with engine.connect() as connection:
                return [
                    str(payload).encode()
                    for (payload,) in connection.exec_driver_sql(
                        "SELECT payload FROM kombu_message"
                    )
                ]
        finally:
            engine.dispose()

    def stored_files(self) -> list[Path]:
        """Every file in storage (slides, labels, staged uploads)."""
        return sorted(p for p in Path(self.settings.storage).rglob("*") if p.is_file())


def _auth(key: str | None, kwargs: dict[str, Any]) -> dict[str, str]:
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def register_model(db: sessionmaker[Session], version: str = "test-1", active: bool = True) -> int:
    with transaction(db) as session:
        return factories.model(
            session,
            version,
            active=active,
            test_metrics={"balanced_accuracy": 0.85},
            confusion={"tp": 8, "fp": 2, "tn": 9, "fn": 1},
        ).id


@pytest.fixture
def service_settings(request: pytest.FixtureRequest, migrated_url: str, tmp_path: Path) -> Settings:
    """Embedded SQLite with its SQL broker, or PostgreSQL with Redis (as in production)."""
    overrides: dict[str, Any] = {}
    if migrated_url.startswith("postgresql"):
        overrides["broker_url"] = request.getfixturevalue("redis_url")
    root = tmp_path / "shared-slides"
    root.mkdir()
    return get_settings(
        data_dir=tmp_path / "data",
        database_url=migrated_url,
        slide_uri_root=str(root),
        max_upload_bytes=4 * 1024**2,
        **overrides,
    )


@pytest.fixture
def serve() -> Iterator[Callable[[Settings], Service]]:
    """Start the app for some settings on a real socket; stopped at the end of the test."""
    from idcscan.api.app import create_app

    servers = []

    def start(settings: Settings) -> Service:
        app = create_app(settings)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        engine = make_engine(settings.database)
        servers.append((server, thread, app, engine))
        db = make_sessionmaker(engine)

        with db() as session:
            active = session.scalar(select(Model.id).where(Model.active))
        model_id = active if active is not None else register_model(db)
        return Service(f"http://127.0.0.1:{server.server_port}", settings, db, model_id)

    yield start
    for server, thread, app, engine in servers:
        server.shutdown()
        thread.join(10)
        server.server_close()
        engine.dispose()
        app.extensions["idcscan.engine"].dispose()


@pytest.fixture
def service(serve: Callable[[Settings], Service], service_settings: Settings) -> Service:
    return serve(service_settings)


def assert_rejected(service: Service, response: requests.Response, status: int, code: str) -> None:
    """A problem+json of `status` and cause `code`, no job row and no stored file left behind,
    and the service still answering."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == f"urn:idcscan:problem:{code}"
    assert body["status"] == status
    assert body["detail"]
    assert service.job_count() == 0
    assert service.stored_files() == []
    assert service.get("/healthz").status_code == 200


def plain_tiff(path: Path, mpp: float | None = None) -> Path:
    """A real tiled TIFF (OpenSlide's generic-tiff); without `mpp` it states no pixel size."""
    import tifffile

    extra: dict[str, Any] = {}
    if mpp is not None:
        extra = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    image = np.full((512, 512, 3), 230, np.uint8)
    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb", **extra)
    return path


def refused(
    service: Service, response: requests.Response, status: int, code: str
) -> dict[str, Any]:
    """Assert a refusal as the security issue asks: the exact status and problem type, no job
    row and no file left, nothing of the machine in the answer, and the service still up."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:idcscan:problem:{code}"
    assert body["status"] == status
    assert service.job_count() == 0
    assert service.stored_files() == []
    # Nothing of the machine leaks into the answer: no storage path, no library text.
    assert service.settings.storage not in response.text
    assert str(service.settings.data_dir) not in response.text
    assert "/tmp" not in response.text and "0x" not in response.text
    assert service.get("/healthz").status_code == 200
    return body


@pytest.fixture
def scoring_service(serve: Callable[[Settings], Service], service_settings: Settings) -> Service:
    """The API with the reference model registered and active, for jobs a real JobRunner scores
    (`score_job`): the viewer's and the worklist's tests need real tiles, slides and files."""
    from idcscan.core.onnxmodel import reference_model
    from idcscan.core.registry import register_model as register

    register(reference_model(), activate=True, database=service_settings.database)
    return serve(service_settings)


def score_job(service: Service, key: str, slide: Path, name: str) -> str:
    """Submit `slide` over HTTP and score it in this process with the worker's JobRunner."""
    from idcscan.worker.jobs import JobRunner
    from idcscan.worker.modelcache import ModelCache

    response = service.submit(key, slide, name=name)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    runner = JobRunner(service.settings, service.db, ModelCache(service.settings, threads=1))
    assert runner.run(uuid.UUID(job_id)) == "succeeded"
    return str(job_id)


def patient_zip(tmp_path: Path, patient: str = "8916") -> Path:
    """A patient of samples/idc as the zip a client uploads (its labels are in the layout)."""
    from tests.conftest import SAMPLE_PATIENTS

    return Path(shutil.make_archive(str(tmp_path / patient), "zip", SAMPLE_PATIENTS, patient))
