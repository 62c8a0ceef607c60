"""`idcscan clients add|list|revoke|rotate`: the key alone on the last line, stored hashed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from idcscan.api.auth import find_client
from idcscan.cli import main
from idcscan.core.db import AuditEvent, Client, make_engine, make_sessionmaker
from idcscan.core.migrate import upgrade

pytestmark = pytest.mark.integration


def _last_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_clients_lifecycle(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upgrade(database_url)
    monkeypatch.setenv("IDCSCAN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IDCSCAN_DATABASE_URL", database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    try:
        assert main(["clients", "add", "ops", "--admin"]) == 0
        key = _last_line(capsys)
        assert main(["clients", "add", "hospital"]) == 0
        hospital_key = _last_line(capsys)
        with sessions() as session:
            found = find_client(session, key)
            assert found is not None and found.name == "ops" and found.role == "admin"
            assert key not in {c.key_hash for c in session.scalars(select(Client))}

        assert main(["clients", "rotate", "hospital"]) == 0
        rotated = _last_line(capsys)
        assert main(["clients", "list"]) == 0
        listing = capsys.readouterr().out
        assert "hospital" in listing and rotated not in listing
        assert main(["clients", "revoke", "ops"]) == 0
        with sessions() as session:
            assert find_client(session, hospital_key) is None
            assert find_client(session, rotated) is not None
            assert find_client(session, key) is None
            actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
        assert actions == ["client.create", "client.create", "client.rotate", "client.revoke"]

        assert main(["clients", "add", "hospital"]) == 2  # a name is taken once
        assert main(["clients", "revoke", "nobody"]) == 2
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", ["a" * 201, "two\nlines", "bell\x07", ""])
def test_a_client_name_the_api_would_refuse_is_a_one_line_error(
    database_url: str,
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The command line takes the names the API takes (PostgreSQL refused an over-long one with a
    traceback; a newline would forge a line of `clients list`)."""
    upgrade(database_url)
    monkeypatch.setenv("IDCSCAN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IDCSCAN_DATABASE_URL", database_url)
    assert main(["clients", "add", name]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("idcscan: error: a client name ")
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            assert session.scalars(select(Client)).all() == []
    finally:
        engine.dispose()


def test_a_database_out_of_reach_is_one_line_and_a_retry_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As right after `docker compose up`, when the engine's DNS does not answer yet: an operator's
    command says so in one line (it printed a traceback) and exits 75, try again."""
    from idcscan.processes import free_port

    monkeypatch.setenv("IDCSCAN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(
        "IDCSCAN_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    )
    assert main(["clients", "list"]) == 75
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("idcscan: error: the database is unreachable: ")
