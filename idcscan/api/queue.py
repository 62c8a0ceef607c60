"""The broker as the API sees it: publish a committed job (`idcscan.broker.publish_job`, which sends
only the id) and check that the broker answers."""

from __future__ import annotations

import uuid

from idcscan.core.settings import Settings


def publish(job_id: uuid.UUID, settings: Settings) -> None:
    from idcscan.broker import publish_job

    publish_job(job_id, settings)


def ping_broker(settings: Settings) -> None:
    """Raise when the broker cannot be reached within two seconds."""
    from kombu import Connection

    with Connection(settings.broker, connect_timeout=2) as connection:
        connection.ensure_connection(max_retries=1, timeout=2)
