"""Shared fixtures: real services, each test isolated.

- PostgreSQL: every test that asks gets a database of its own, dropped afterwards.
- Redis: every test that asks gets a database index of its own (claimed with a lock key in db 0,
  so parallel test runs on one server do not collide), flushed before and after.
- A missing service skips the test with the reason; under CI=true it fails instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SAMPLE_PATIENTS = SAMPLES / "idc"
SAMPLE_SVS = SAMPLES / "wsi" / "CMU-1-Small-Region.svs"

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_ADMIN_URL = os.environ.get(
    "IDCSCAN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_TEST_URL = os.environ.get("IDCSCAN_TEST_REDIS_URL", "redis://127.0.0.1:6379")


# Markers of tests that run only when asked for (`pytest -m NAME`): they take minutes.
ON_REQUEST = {
    "fuzz": "thorough fuzzing; run with -m fuzz",
    "compose": "builds images and runs the compose stack; run with -m compose (.ci/run does)",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `fuzz` or `compose` run only when their marker is selected."""
    selected = config.option.markexpr or ""
    for marker, reason in ON_REQUEST.items():
        if marker in selected:
            continue
        for item in items:
            if item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=reason))


def service_missing(reason: str) -> None:
    """Skip with a visible reason; under CI a missing service is a failure."""
    if IN_CI:
        pytest.fail(f"CI=true and a required service is missing: {reason}")
    pytest.skip(reason)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'idcscan.sqlite3'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"idcscan_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        service_missing(
            f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc.__class__.__name__}"
        )
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs on the embedded SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database index of this test's own, empty."""
    import redis

    lock_client = redis.Redis.from_url(f"{REDIS_TEST_URL}/0")
    try:
        lock_client.ping()
    except redis.RedisError as exc:
        service_missing(f"Redis not reachable at {REDIS_TEST_URL}: {exc.__class__.__name__}")
    token = uuid.uuid4().hex
    index = next(
        (
            n
            for n in range(1, 16)
            if lock_client.set(f"idcscan-test-lock:{n}", token, nx=True, ex=1800)
        ),
        None,
    )
    if index is None:
        pytest.fail("all 15 Redis test databases are claimed by other test runs")
    url = f"{REDIS_TEST_URL}/{index}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
        if lock_client.get(f"idcscan-test-lock:{index}") == token.encode():
            lock_client.delete(f"idcscan-test-lock:{index}")
        lock_client.close()


@pytest.fixture
def migrated_url(database_url: str) -> str:
    """A database (SQLite and PostgreSQL) migrated to head."""
    from idcscan.core.migrate import upgrade

    upgrade(database_url)
    return database_url
