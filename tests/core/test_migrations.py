"""The schema changes only through migrations: upgrade, no drift, one head, down and up again."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from idcscan.core.db import Base, make_engine
from idcscan.core.migrate import alembic_config, current_revision, downgrade, upgrade

pytestmark = pytest.mark.integration

TABLES = {
    "clients",
    "models",
    "jobs",
    "tile_scores",
    "slide_results",
    "confusion_stats",
    "audit_events",
    "webhook_deliveries",
}


def test_one_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, f"migrations have several heads: {heads}"


def test_upgrade_creates_every_table(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert current_revision(database_url) == head


def test_tables_match_migrations(database_url: str) -> None:
    """Autogenerate finds nothing to do: the models and the migrations describe the same schema."""
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_downgrade_to_base_and_up_again(database_url: str) -> None:
    upgrade(database_url)
    downgrade(database_url, "base")
    engine = make_engine(database_url)
    try:
        assert not TABLES & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    upgrade(database_url)
    assert current_revision(database_url) is not None


def test_db_upgrade_command_defaults_to_sqlite_in_data_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("IDCSCAN_DATABASE_URL", raising=False)
    env = {"IDCSCAN_DATA_DIR": str(tmp_path / "data"), "PATH": "", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "idcscan.cli", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    database = tmp_path / "data" / "idcscan.sqlite3"
    assert database.is_file()
    assert current_revision(f"sqlite:///{database}") is not None


def test_db_upgrade_command_on_postgresql(postgres_url: str, tmp_path) -> None:
    env = {"IDCSCAN_DATABASE_URL": postgres_url, "IDCSCAN_DATA_DIR": str(tmp_path), "PATH": ""}
    done = subprocess.run(
        [sys.executable, "-m", "idcscan.cli", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert current_revision(postgres_url) is not None
    assert not (tmp_path / "idcscan.sqlite3").exists()


def test_0002_adds_the_request_fingerprint_and_keeps_existing_jobs(database_url: str) -> None:
    """Jobs submitted before 0002 keep their idempotency keys, with no fingerprint (NULL)."""
    upgrade(database_url, "0001")
    engine = make_engine(database_url)
    job_id = "0b7c4a56-9e3d-4f4c-8a4e-1f1f6c1d2e3a"
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO clients (id, name, key_prefix, key_hash, role, created_at) "
                    "VALUES (1, 'c', 'abcdef01', 'h', 'client', CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO models (id, version, architecture, onnx_sha256, location, "
                    "tile_spec, threshold, test_metrics, confusion, active, created_at) VALUES "
                    "(1, 'v', 'a', 's', 'l', '{}', 0.5, '{}', '{}', false, CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO jobs (id, client_id, model_id, status, slide_uri, tiles_done, "
                    "attempts, idempotency_key, created_at, updated_at) VALUES (:id, 1, 1, "
                    "'queued', 'x', 0, 0, 'k-1', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"id": uuid.UUID(job_id).hex if database_url.startswith("sqlite") else job_id},
            )
        engine.dispose()
        upgrade(database_url)
        with engine.connect() as connection:
            row = connection.execute(text("SELECT idempotency_key, request_sha256 FROM jobs")).one()
        assert tuple(row) == ("k-1", None)
        engine.dispose()
        downgrade(database_url, "0001")
        assert "request_sha256" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    finally:
        engine.dispose()
