"""The compose file's services as plain processes, on real Redis and PostgreSQL: the migration,
the API under gunicorn, two workers and the scheduler, each started with the command the compose
file gives it. Twenty slides submitted over HTTP all finish once, spread over both workers; a job
committed but never published (an API that died between commit and publish) is found by the
scheduler and finishes too."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import yaml
from sqlalchemy import func, select

from idcscan.core.db import Job, JobStatus, TileScore, make_engine, make_sessionmaker, utcnow
from tests.conftest import ROOT, SAMPLE_PATIENTS
from tests.processes import free_port, idcscan_cli, idcscan_process, wait_for_line, wait_until_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLIDES = 20


def compose_commands() -> dict[str, list[str]]:
    """Each idcscan service's command from docker-compose.yml, without the leading `idcscan`."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {
        name: service["command"][1:]
        for name, service in services.items()
        if service.get("command", [None])[0] == "idcscan"
    }


def on_loopback(args: list[str], port: int) -> list[str]:
    """The API's command with its port swapped for a free one, listening on loopback only."""
    args = list(args)
    args[args.index("--port") + 1] = str(port)
    args[args.index("--host") + 1] = "127.0.0.1"
    return args


def test_twenty_slides_over_two_workers(postgres_url: str, redis_url: str, tmp_path: Path) -> None:
    from idcscan.core.assemble import assemble
    from tests.worker.models import build_model

    commands = compose_commands()
    env = {
        "IDCSCAN_DATABASE_URL": postgres_url,
        "IDCSCAN_BROKER_URL": redis_url,
        "IDCSCAN_RATE_LIMIT_STORAGE_URL": redis_url,
        "IDCSCAN_STORAGE_URL": str(tmp_path / "storage"),
        "IDCSCAN_DATA_DIR": str(tmp_path / "data"),
        "IDCSCAN_INFERENCE_THREADS": "1",
        "IDCSCAN_LEASE_S": "5",
        "IDCSCAN_RECONCILE_INTERVAL_S": "1",
    }
    idcscan_cli(env, *commands["migrate"])
    idcscan_cli(env, "models", "register", str(build_model(tmp_path / "tiny.onnx")), "--activate")
    key = idcscan_cli(env, "clients", "add", "hospital").strip().splitlines()[-1]
    slide = tmp_path / "8916.tiff"
    assemble(SAMPLE_PATIENTS / "8916", slide)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logs = {name: tmp_path / f"{name}.log" for name in ("api", "worker-1", "worker-2", "scheduler")}
    auth = {"Authorization": f"Bearer {key}"}
    with (
        idcscan_process(on_loopback(commands["api"], port), env, logs["api"]),
        idcscan_process(commands["worker"], env, logs["worker-1"]),
        idcscan_process(commands["worker"], env, logs["worker-2"]),
        idcscan_process(commands["scheduler"], env, logs["scheduler"]),
    ):
        wait_until_up(url, logs["api"])
        for worker in ("worker-1", "worker-2"):
            wait_for_line(logs[worker], "ready.")

        submitted = []
        for n in range(SLIDES):
            with slide.open("rb") as handle:
                reply = requests.post(
                    url + "/v1/jobs",
                    files={"slide": ("slide.tiff", handle)},
                    headers={**auth, "Idempotency-Key": f"slide-{n}"},
                    timeout=60,
                )
            assert reply.status_code == 202, reply.text
            submitted.append(reply.json()["id"])
        assert len(set(submitted)) == SLIDES

        # An API that died between commit and publish: the row exists, no message was sent.
        engine = make_engine(postgres_url)
        sessions = make_sessionmaker(engine)
        with sessions() as session, session.begin():
            template = session.get(Job, uuid.UUID(submitted[0]))
            assert template is not None
            orphan = Job(
                client_id=template.client_id,
                model_id=template.model_id,
                slide_uri=template.slide_uri,
                slide_sha256=template.slide_sha256,
                slide_format=template.slide_format,
                updated_at=utcnow() - timedelta(minutes=5),
            )
            session.add(orphan)
        every_job = [uuid.UUID(job) for job in submitted] + [orphan.id]

        deadline = time.monotonic() + 240
        while True:
            with sessions() as session:
                statuses = dict(
                    session.execute(select(Job.id, Job.status).where(Job.id.in_(every_job))).all()
                )
            if all(status == JobStatus.SUCCEEDED for status in statuses.values()):
                break
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n}\n{p.read_text()[-1500:]}" for n, p in logs.items())
                pytest.fail(f"not all jobs finished: {statuses}\n{tails}")
            time.sleep(0.5)

        with sessions() as session:
            jobs = session.scalars(select(Job).where(Job.id.in_(every_job))).all()
            tiles = dict(
                session.execute(
                    select(TileScore.job_id, func.count())
                    .where(TileScore.job_id.in_(every_job))
                    .group_by(TileScore.job_id)
                ).all()
            )
        engine.dispose()

    for job in jobs:
        assert job.tiles_total and tiles[job.id] == job.tiles_total == job.tiles_done, job.id
        assert job.attempts == 1, f"job {job.id} ran {job.attempts} times"

    for name in ("worker-1", "worker-2", "scheduler"):
        records = [line for line in logs[name].read_text().splitlines() if line.startswith("{")]
        assert records, f"{name} wrote no structured log lines"
        for line in records:
            json.loads(line)

    done_by = {
        worker: set(re.findall(r"job ([0-9a-f-]{36}): succeeded", logs[worker].read_text()))
        for worker in ("worker-1", "worker-2")
    }
    assert done_by["worker-1"] and done_by["worker-2"], f"one worker did everything: {done_by}"
    assert not done_by["worker-1"] & done_by["worker-2"], "a job succeeded on both workers"
    # The orphan was never published by the API: only the scheduler can have sent it.
    assert done_by["worker-1"] | done_by["worker-2"] == {str(j) for j in every_job}
    assert "republished" in logs["scheduler"].read_text()
