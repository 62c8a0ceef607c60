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
