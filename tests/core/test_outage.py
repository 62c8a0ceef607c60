"""Our own outage is told from every other error by what really raised it."""

from __future__ import annotations

import pytest
import sqlalchemy.exc
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, text

from idcscan.core.outage import unavailable
from idcscan.processes import free_port


def _raised(action) -> BaseException:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception) as caught:
        action()
    return caught.value


def test_a_database_that_does_not_answer_is_an_outage() -> None:
    engine = create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    try:
        error = _raised(lambda: engine.connect().execute(text("SELECT 1")))
    finally:
        engine.dispose()
    assert isinstance(error, sqlalchemy.exc.OperationalError)
    assert unavailable(error) == "database"


def test_a_broker_that_does_not_answer_is_an_outage() -> None:
    from kombu import Connection

    def connect() -> None:
        with Connection(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=1) as connection:
            connection.ensure_connection(max_retries=1, timeout=1)

    assert unavailable(_raised(connect)) == "broker"


def test_bugs_and_bad_data_are_not_outages() -> None:
    engine = create_engine("sqlite://")
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True))
    table.create(engine)

    def insert_twice() -> None:
        with engine.begin() as connection:
            connection.execute(table.insert().values(id=1))
            connection.execute(table.insert().values(id=1))

    try:
        duplicate = _raised(insert_twice)
    finally:
        engine.dispose()
    assert isinstance(duplicate, sqlalchemy.exc.IntegrityError)
    assert unavailable(duplicate) is None
    assert unavailable(KeyError("x")) is None
    # An error raised while handling an outage is a bug of its own, not the outage.
    try:
        try:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionError())
        except sqlalchemy.exc.OperationalError:
            raise ValueError("handler bug")  # noqa: B904 - the implicit context is the point
    except ValueError as bug:
        assert unavailable(bug) is None
