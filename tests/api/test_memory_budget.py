"""The API process's peak memory stays bounded while it judges hostile slides and labels (M4).

The API runs in a child process of its own (a real HTTP server on a socket), so that its peak
resident memory (Linux's VmHWM) measures that process alone. Each hostile body is a few hundred
kB to 60 MB and used to cost the API 1 to 3 GB: a PNG decoded whole, a zip member inflated in
one call, a labels file parsed into Python objects.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from idcscan.core.db import make_engine, make_sessionmaker, transaction
from idcscan.core.migrate import upgrade
from idcscan.processes import free_port
from tests import factories
from tests.conftest import SAMPLE_SVS
from tests.hostile import blank_png, many_points_geojson, zip_bomb, zip_lying_about_sizes

from .conftest import KOMBU_NOLOAD, register_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    KOMBU_NOLOAD,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status"),
]

# Growth of the API's peak RSS allowed for judging one hostile body, over its peak after
# judging ordinary ones: the labels parser's and slide readers' budgets plus slack.
GROWTH_BUDGET_MB = 150

SERVE = """
import sys
from werkzeug.serving import make_server
from idcscan.api.app import create_app
server = make_server("127.0.0.1", int(sys.argv[1]), create_app(), threaded=True)
print("listening", flush=True)
server.serve_forever()
"""


def reset_peak(pid: int) -> None:
    """Linux resets a process's VmHWM to its current RSS when "5" is written to clear_refs."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


class Api:
    def __init__(self, url: str, pid: int, key: str) -> None:
        self.url, self.pid, self.key = url, pid, key

    def submit(self, slide: Path, data: dict[str, str], labels: bytes | None = None) -> int:
        with slide.open("rb") as handle:
            files: dict[str, object] = {"slide": ("s", handle, "application/octet-stream")}
            if labels is not None:
                files["labels"] = ("l", labels, "application/octet-stream")
            response = requests.post(
                self.url + "/v1/jobs",
                headers={"Authorization": f"Bearer {self.key}"},
                files=files,
                data=data,
                timeout=120,
            )
        return response.status_code


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    data = tmp_path_factory.mktemp("memory-api")
    url = f"sqlite:///{data / 'idcscan.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    register_model(sessions)
    with transaction(sessions) as session:
        _client, key = factories.client(session, "memory")
    engine.dispose()
    env = {
        "IDCSCAN_DATA_DIR": str(data),
        "IDCSCAN_DATABASE_URL": url,
        "IDCSCAN_MAX_UPLOAD_BYTES": str(16 * 1024**2),
        "IDCSCAN_LOG_LEVEL": "WARNING",
    }
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(port)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"listening"
        api = Api(f"http://127.0.0.1:{port}", child.pid, key)
        # Warm up: an ordinary slide with ordinary labels, so that the baseline holds every
        # import and cache a first request brings.
        labels = b"row,col,label\n0,0,1\n1,1,0\n"
        for _ in range(2):
            assert api.submit(SAMPLE_SVS, {}, labels) == 202
        yield api
    finally:
        child.terminate()
        child.wait(20)
        if child.stdout is not None:
            child.stdout.close()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, bytes | None]]:
    folder = tmp_path_factory.mktemp("hostile")
    return {
        "png-432MB-decoded": (blank_png(folder / "wide.png", 12_000, 12_000), None),
        "png-beyond-pillows-guard": (blank_png(folder / "bomb.png", 16_000, 16_000), None),
        "zip-1.4GB-inflated": (zip_bomb(folder / "bomb.zip", 1400 * 1024**2), None),
        "zip-lying-about-sizes": (
            zip_lying_about_sizes(folder / "lying.zip", 1400 * 1024**2),
            None,
        ),
        "labels-55MB-polygon": (SAMPLE_SVS, many_points_geojson(5_000_000)),
        "labels-60MB-csv": (SAMPLE_SVS, b"row,col,label\n" + b"1,2,1\n" * 10_000_000),
    }


@pytest.mark.parametrize(
    "name",
    [
        "png-432MB-decoded",
        "png-beyond-pillows-guard",
        "zip-1.4GB-inflated",
        "zip-lying-about-sizes",
        "labels-55MB-polygon",
        "labels-60MB-csv",
    ],
)
def test_a_hostile_body_costs_the_api_little_memory(
    api: Api, hostile: dict[str, tuple[Path, bytes | None]], name: str
) -> None:
    slide, labels = hostile[name]
    reset_peak(api.pid)
    before = peak_rss_mb(api.pid)
    started = time.perf_counter()
    status = api.submit(slide, {"mpp": "1.0"}, labels)
    seconds = time.perf_counter() - started
    grown = peak_rss_mb(api.pid) - before
    print(f"{name}: HTTP {status}, peak RSS +{grown:.0f} MB over {before:.0f} MB, {seconds:.1f} s")
    assert 400 <= status < 500, f"{name}: HTTP {status}, peak RSS grew by {grown:.0f} MB"
    assert grown < GROWTH_BUDGET_MB, f"{name}: peak RSS grew by {grown:.0f} MB in {seconds:.1f} s"
    assert requests.get(api.url + "/healthz", timeout=10).status_code == 200
