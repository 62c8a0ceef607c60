"""Storage spans machines through fsspec: the same Storage API against a real S3-compatible server
(moto in server mode, over HTTP on loopback), configured the way an operator configures it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from idcscan.core.storage import Storage, as_local_file, open_uri
from tests.conftest import SAMPLE_SVS

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    pytest.importorskip("s3fs", reason="the s3 extra is not installed")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("moto S3 server did not start")
                time.sleep(0.1)
        # What the compose file's environment sets for every idcscan service.
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "idcscan")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", endpoint)
        import fsspec.config

        fsspec.config.set_conf_env(fsspec.config.conf)
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="idcscan")
        yield endpoint
    finally:
        import fsspec.config

        fsspec.config.conf.pop("s3", None)
        server.terminate()
        server.wait(timeout=10)


def test_storage_round_trip_on_s3(s3_endpoint: str, tmp_path: Path) -> None:
    storage = Storage("s3://idcscan/prod")
    uri = storage.put_file(SAMPLE_SVS, "slides/cmu1.svs")
    assert uri == "s3://idcscan/prod/slides/cmu1.svs"
    assert storage.exists("slides/cmu1.svs")

    # A second machine sees the same object through the URI alone.
    with open_uri(uri) as handle:
        assert handle.read() == SAMPLE_SVS.read_bytes()
    with as_local_file(uri, suffix=".svs") as local:
        assert local.read_bytes() == SAMPLE_SVS.read_bytes()
        downloaded = local
    assert not downloaded.exists(), "the temporary download is removed afterwards"

    storage.put_bytes("results/job-1/summary.json", b"{}")
    assert storage.read_bytes("results/job-1/summary.json") == b"{}"
    storage.delete("results/job-1")
    assert not storage.exists("results/job-1/summary.json")
