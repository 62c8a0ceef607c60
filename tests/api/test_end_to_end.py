"""The whole service as deployed: `idcscan api` (gunicorn) and `idcscan worker` as processes.

A client made with `idcscan clients add` submits the assembled patient 8916 with its labels over
HTTP, polls until a real worker has scored it, and fetches every result format. The upload's file
name carries a canary that must appear in no log line of either process.
"""

from __future__ import annotations

import csv
import io
import time
import uuid
from pathlib import Path

import pytest
import requests

from idcscan.core.migrate import upgrade
from tests.conftest import SAMPLE_PATIENTS
from tests.processes import free_port, idcscan_cli, idcscan_process, wait_until_up

from .conftest import KOMBU_NOLOAD

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def assembled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from idcscan.core.assemble import assemble

    out = tmp_path_factory.mktemp("assembled") / "8916.tiff"
    assemble(SAMPLE_PATIENTS / "8916", out)
    return out


@pytest.mark.parametrize("mode", ["redis+postgresql", pytest.param("embedded", marks=KOMBU_NOLOAD)])
def test_submit_score_and_fetch_everything(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, assembled: Path
) -> None:
    from tests.worker.models import build_model

    env = {
        "IDCSCAN_DATA_DIR": str(tmp_path / "data"),
        "IDCSCAN_INFERENCE_THREADS": "1",
        "IDCSCAN_LOG_LEVEL": "DEBUG",
    }
    if mode == "embedded":
        env["IDCSCAN_DATABASE_URL"] = f"sqlite:///{tmp_path / 'data' / 'idcscan.sqlite3'}"
    else:
        env["IDCSCAN_DATABASE_URL"] = request.getfixturevalue("postgres_url")
        env["IDCSCAN_BROKER_URL"] = request.getfixturevalue("redis_url")
        env["IDCSCAN_RATE_LIMIT_STORAGE_URL"] = request.getfixturevalue("redis_url")
    upgrade(env["IDCSCAN_DATABASE_URL"])
    model = build_model(tmp_path / "tiny.onnx")
    idcscan_cli(env, "models", "register", str(model), "--activate")
    key = idcscan_cli(env, "clients", "add", "hospital").strip().splitlines()[-1]

    workers = "1" if mode == "embedded" else "2"
    canary = f"CANARY-{uuid.uuid4().hex}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    auth = {"Authorization": f"Bearer {key}"}
    with (
        # Embedded, rate limits are counted in memory: one API process (more are refused).
        idcscan_process(["api", "--port", str(port), "--workers", workers], env, api_log),
        idcscan_process(["worker", "--concurrency=1"], env, worker_log),
    ):
        wait_until_up(url, api_log)
        assert requests.get(url + "/readyz", timeout=10).json() == {
            "status": "ok",
            "checks": {"database": "ok", "broker": "ok"},
        }
        with assembled.open("rb") as slide, assembled.with_suffix(".geojson").open("rb") as labels:
            files = {"slide": (f"{canary}.tiff", slide), "labels": (f"{canary}.geojson", labels)}
            submitted = requests.post(url + "/v1/jobs", files=files, headers=auth, timeout=60)
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()
        assert job["labelled"] is True
        rejected = requests.post(
            url + "/v1/jobs",
            files={"slide": (f"{canary}.svs", b"not a slide")},
            headers=auth,
            timeout=10,
        )
        assert rejected.status_code == 415

        deadline = time.monotonic() + 120
        while (
            status := requests.get(url + f"/v1/jobs/{job['id']}", headers=auth, timeout=5).json()
        )["status"] in ("queued", "running"):
            if time.monotonic() > deadline:
                pytest.fail(f"not scored in time: {status}\n{_worker_story(worker_log)}")
            time.sleep(0.25)
        assert status["status"] == "succeeded", (status, _worker_story(worker_log))
        assert status["progress"]["tiles_done"] == status["progress"]["tiles_total"] > 0

        base = url + f"/v1/jobs/{job['id']}"
        result = requests.get(base + "/result", headers=auth, timeout=10).json()
        assert result["tissue_tiles"] > 0
        assert result["confusion"] is not None
        assert next(iter(result["confusion"])) == "missed_idc"
        # The stain check's fields are served; this test model carries no stain reference.
        assert result["in_distribution"] is True and result["ood_reason"] is None
        assert result["stain_distance"] is None and result["slide_call"] != "indeterminate"

        tiles = requests.get(base + "/tiles", headers=auth, timeout=10).json()
        assert tiles["job_id"] == job["id"]
        assert len(tiles["tiles"]) == status["progress"]["tiles_total"]
        as_csv = requests.get(base + "/tiles", headers={**auth, "Accept": "text/csv"}, timeout=10)
        assert as_csv.headers["Content-Type"].startswith("text/csv")
        assert len(list(csv.DictReader(io.StringIO(as_csv.text)))) == len(tiles["tiles"])

        heatmap = requests.get(base + "/heatmap.png", headers=auth, timeout=10)
        assert heatmap.status_code == 200
        assert heatmap.content.startswith(b"\x89PNG")
        geojson = requests.get(base + "/annotations.geojson", headers=auth, timeout=10)
        assert geojson.headers["Content-Type"] == "application/geo+json"
        assert geojson.json()["type"] == "FeatureCollection"

        stats = requests.get(
            url + "/v1/stats/confusion?period=day", headers=auth, timeout=10
        ).json()
        assert [b["jobs"] for b in stats["buckets"]] == [1]
        assert stats["buckets"][0]["confusion"]["tp"] == result["confusion"]["tp"]

        admin = idcscan_cli(env, "clients", "add", "ops", "--admin").strip().splitlines()[-1]
        metrics = requests.get(
            url + "/metrics", headers={"Authorization": f"Bearer {admin}"}, timeout=10
        ).text
        assert 'idcscan_jobs{status="succeeded"} 1.0' in metrics
        assert "idcscan_tiles_scored_total" in metrics
        assert (
            'idcscan_http_request_duration_seconds_count{method="GET",route="/v1/jobs/<uuid:job_id>"'
            in metrics
        )

    logs = api_log.read_text() + worker_log.read_text()
    assert job["id"] in logs  # the logs do name jobs...
    assert canary not in logs  # ...and never file names


def _worker_story(log: Path) -> str:
    """The worker log's errors whole (a traceback is one long JSON line), then its end."""
    lines = log.read_text().splitlines()
    errors = [line for line in lines if '"level": "ERROR"' in line or '"level": "CRITICAL"' in line]
    return "\n".join(errors[:3]) + "\n...\n" + "\n".join(lines)[-3000:]
