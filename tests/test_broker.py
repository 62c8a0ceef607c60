"""The Celery app's broker connection: the embedded SQL transport polls every `SQL_POLL_S` on the
connection a real worker consumes with, reads the queue tables any `sqla+` client writes, and a
Redis broker is connected as Celery connects it by default."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker
from kombu import Connection

from idcscan.broker import QUEUE, SQL_POLL_S, broker_connection, create_app
from idcscan.core.settings import get_settings
from tests.api.conftest import KOMBU_NOLOAD

pytestmark = [KOMBU_NOLOAD]


def test_a_worker_on_the_embedded_broker_polls_every_tenth_of_a_second(tmp_path: Path) -> None:
    app = create_app(get_settings(data_dir=tmp_path))
    assert app.settings.broker.startswith("sqla+sqlite")
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10) as worker:
        transport = worker.consumer.connection.transport
    assert transport.polling_interval == SQL_POLL_S
    assert transport.polling_interval < 1.0  # kombu's own 1 s: a job waited 0.5 s on average


def test_the_app_reads_what_a_plain_sqla_client_queued(tmp_path: Path) -> None:
    """The app connects without the `sqla+` prefix: the very same file and tables, so a message
    an earlier release (or `kombu.Connection(settings.broker)`) queued is still delivered."""
    settings = get_settings(data_dir=tmp_path)
    with Connection(settings.broker) as plain:
        plain.SimpleQueue(QUEUE).put({"job": "queued-before"})
    app = create_app(settings)
    with app.connection_for_read() as connection:
        simple = connection.SimpleQueue(QUEUE)
        message = simple.get(timeout=5)
        message.ack()
        simple.close()
    assert message.payload == {"job": "queued-before"}


@pytest.mark.parametrize("url", ["redis://redis:6379/0", "rediss://cache.example:6380/1"])
def test_a_redis_broker_is_connected_by_its_url_alone(url: str) -> None:
    assert broker_connection(url) == (url, None)
    app = create_app(get_settings(broker_url=url))
    assert app.conf.broker_url == url
    assert app.conf.broker_transport is None


def test_a_queue_another_process_created_meanwhile_is_read_not_fatal(tmp_path: Path) -> None:
    """The API's first publish and a starting worker both find the queue missing on a new broker
    file and insert it: the one that loses the race reads the other's row (kombu guards threads
    only; the IntegrityError stopped a worker, and its job waited in the queue)."""
    import sqlite3

    from sqlalchemy import event

    settings = get_settings(data_dir=tmp_path)
    broker_file = settings.broker.removeprefix("sqla+sqlite:///")
    with create_app(settings).connection_for_write() as connection:
        channel = connection.default_channel
        engine = channel.session.get_bind()
        raced: list[int] = []

        def meanwhile(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
            """Between our look and our insert, another process inserts the queue's row."""
            if statement.startswith("INSERT INTO kombu_queue") and not raced:
                with sqlite3.connect(broker_file) as other:
                    row = other.execute("INSERT INTO kombu_queue (name) VALUES (?)", [QUEUE])
                    raced.append(int(row.lastrowid or 0))

        event.listen(engine, "before_cursor_execute", meanwhile)
        queue = channel._get_or_create(QUEUE)
    assert raced, "the race was not staged"
    assert (queue.name, queue.id) == (QUEUE, raced[0])
