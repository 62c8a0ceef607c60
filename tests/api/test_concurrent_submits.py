"""Twenty clients submitting the same slide under one Idempotency-Key at once, against `idcscan
api` as deployed (gunicorn, its head-first threaded worker, fewer threads than clients): every
client gets an answer within seconds, the job or its replay, and exactly one job exists."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from idcscan.core.migrate import upgrade
from tests.conftest import SAMPLE_SVS
from tests.processes import free_port, idcscan_cli, idcscan_process, wait_until_up

from .conftest import KOMBU_NOLOAD

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS = 20
ROUNDS = 2
ANSWER_WITHIN_S = 20.0
"""Far more than twenty uploads of a 2 MB slide take on a loaded two-core machine (a second or
two), far less than the 180 s the fault campaign waited in vain."""


def _submit_together(
    url: str, key: str, idempotency_key: str, clients: list[requests.Session]
) -> list[tuple[float, object]]:
    """Each client's (seconds to its answer, the answer or the exception it got); a client keeps
    its connection from one round to the next, as an HTTP client library does."""
    start = threading.Barrier(CLIENTS)
    slide = SAMPLE_SVS.read_bytes()

    def one(n: int) -> tuple[float, object]:
        start.wait()
        began = time.monotonic()
        try:
            answer: object = clients[n].post(
                url + "/v1/jobs",
                files={"slide": ("slide.svs", slide)},
                headers={"Authorization": f"Bearer {key}", "Idempotency-Key": idempotency_key},
                timeout=ANSWER_WITHIN_S,
            )
        except requests.RequestException as exc:
            answer = exc
        return time.monotonic() - began, answer

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one, range(CLIENTS)))


@pytest.mark.parametrize("mode", ["redis+postgresql", pytest.param("embedded", marks=KOMBU_NOLOAD)])
def test_twenty_same_key_submits_all_get_an_answer(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from tests.worker.models import build_model

    env = {"IDCSCAN_DATA_DIR": str(tmp_path / "data"), "IDCSCAN_RATE_LIMIT": "10000/minute"}
    if mode == "embedded":
        env["IDCSCAN_DATABASE_URL"] = f"sqlite:///{tmp_path / 'data' / 'idcscan.sqlite3'}"
    else:
        env["IDCSCAN_DATABASE_URL"] = request.getfixturevalue("postgres_url")
        env["IDCSCAN_BROKER_URL"] = request.getfixturevalue("redis_url")
        env["IDCSCAN_RATE_LIMIT_STORAGE_URL"] = request.getfixturevalue("redis_url")
    upgrade(env["IDCSCAN_DATABASE_URL"])
    idcscan_cli(env, "models", "register", str(build_model(tmp_path / "tiny.onnx")), "--activate")
    key = idcscan_cli(env, "clients", "add", "hospital").strip().splitlines()[-1]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "api.log"
    workers = "1" if mode == "embedded" else "2"
    args = ["api", "--port", str(port), "--workers", workers, "--threads", "4"]
    with idcscan_process(args, env, log):
        wait_until_up(url, log)
        clients = [requests.Session() for _ in range(CLIENTS)]
        for round_ in range(ROUNDS):
            answers = _submit_together(url, key, f"same-{round_}", clients)
            late = [(s, a) for s, a in answers if not isinstance(a, requests.Response)]
            assert not late, (late, log.read_text()[-3000:])
            responses = [a for _, a in answers if isinstance(a, requests.Response)]
            assert {r.status_code for r in responses} == {202}, [r.text for r in responses]
            assert len({r.json()["id"] for r in responses}) == 1
            replayed = [r for r in responses if r.headers.get("Idempotent-Replayed") == "true"]
            assert len(replayed) == CLIENTS - 1
        jobs = requests.get(
            url + "/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        assert len(jobs.json()["jobs"]) == ROUNDS
