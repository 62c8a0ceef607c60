"""Fixtures of the fault tests: servers of the test's own, which the test may stop and kill."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from idcscan.core.db import make_engine, make_sessionmaker, transaction
from idcscan.core.settings import Settings

# The API tests' real HTTP server and the worker tests' tiny ONNX model and job rows, shared.
from tests.api.conftest import serve, service_settings  # noqa: F401
from tests.conftest import SAMPLE_PATIENTS
from tests.faults.servers import PostgresCluster, RedisServer
from tests.worker.conftest import make_job, tiny_model, tiny_model_row  # noqa: F401


@pytest.fixture(scope="session")
def patient_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Patient 8916's patches as one zip, the way the API stores an upload: a single blob that
    the job names, so the reconciler's storage GC keeps it (a copied folder's files keep their
    old times and are named by no job, so the GC removes them under a running test)."""
    import shutil

    base = tmp_path_factory.mktemp("patient") / "8916"
    return Path(shutil.make_archive(str(base), "zip", SAMPLE_PATIENTS, "8916"))


@pytest.fixture(scope="session")
def long_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tissue-coloured 4000 x 4000 px pyramid at 4 um/px: 6,400 tiles, seconds to score (long
    enough to hit a job in the middle)."""
    import numpy as np

    from idcscan.core.assemble import write_pyramid

    rng = np.random.default_rng(0)
    pixels = np.empty((4000, 4000, 3), np.uint8)
    pixels[...] = (200, 110, 160)
    pixels[::7, ::3] = rng.integers(60, 200, (pixels[::7, ::3].shape), dtype=np.uint8)
    path = tmp_path_factory.mktemp("long") / "long.tiff"
    write_pyramid(pixels, path, mpp=4.0)
    return path


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One cluster per test session (initdb takes seconds); each test gets a database of its own."""
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def own_postgres(pg_cluster: PostgresCluster) -> Iterator[tuple[PostgresCluster, str]]:
    """The cluster, running, and the URL of a fresh database on it; started again if a test left
    it stopped."""
    if not pg_cluster.running():
        pg_cluster.start()
    name = f"faults_{uuid.uuid4().hex[:12]}"
    _admin(pg_cluster, f'CREATE DATABASE "{name}"')
    url = make_url(pg_cluster.url).set(database=name).render_as_string(hide_password=False)
    try:
        yield pg_cluster, url
    finally:
        if not pg_cluster.running():
            pg_cluster.start()
        _admin(pg_cluster, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(cluster: PostgresCluster, statement: str) -> None:
    # A fresh engine each time: a pooled connection would not survive the test's restarts.
    admin = create_engine(cluster.url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(statement))
    finally:
        admin.dispose()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def activate_tiny_model(tiny_model: Path) -> Callable[[Settings], None]:  # noqa: F811 - the fixture
    """activate_tiny_model(settings): the worker tests' tiny ONNX model registered and active in
    that database, so that an API started next gives its jobs to it."""

    def activate(settings: Settings) -> None:
        engine = make_engine(settings.database)
        try:
            with transaction(make_sessionmaker(engine)) as session:
                tiny_model_row(session, tiny_model)
        finally:
            engine.dispose()

    return activate
