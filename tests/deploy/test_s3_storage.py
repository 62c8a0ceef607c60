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

from idcscan.core.errors import InvalidInput
from idcscan.core.storage import Storage, as_local_file, open_uri
from tests import factories
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


def test_slide_uri_on_object_storage_is_scoped_per_client(s3_endpoint: str, tmp_path: Path) -> None:
    # A slide_uri root on S3: each client names objects under its own prefix only, and another
    # client's object answers exactly as an absent one.
    from idcscan.api.problems import Problem
    from idcscan.api.upload import resolve_slide_uri, stage_shared_file

    root = "s3://idcscan/scans"
    Storage(root).put_file(SAMPLE_SVS, "client-1/case.svs")
    Storage(root).put_bytes("client-1/cases/.keep", b"")
    staged = stage_shared_file(resolve_slide_uri("case.svs", root, 1), tmp_path, 10**8, "slide")
    assert staged.path.read_bytes() == SAMPLE_SVS.read_bytes()
    assert staged.size == SAMPLE_SVS.stat().st_size
    answers = set()
    for uri, client in [
        ("s3://idcscan/scans/client-1/case.svs", 2),
        ("s3://idcscan/scans/client-1/absent.svs", 2),
        ("../client-1/case.svs", 2),
        ("case.svs", 2),
        ("cases", 1),
    ]:
        with pytest.raises(Problem) as refused:
            stage_shared_file(resolve_slide_uri(uri, root, client), tmp_path, 10**8, "slide")
        answers.add((refused.value.status, refused.value.code, refused.value.detail))
    assert answers == {(422, "slide-not-found", "No slide by that name in your slide folder.")}
    with pytest.raises(InvalidInput) as too_large:
        stage_shared_file(resolve_slide_uri("case.svs", root, 1), tmp_path, 1000, "slide")
    assert too_large.value.code == "upload-too-large"
    assert [p.name for p in tmp_path.iterdir()] == [staged.path.name]


def test_storage_gc_on_object_storage(s3_endpoint: str, sqlite_url: str) -> None:
    from idcscan.core.db import make_engine, make_sessionmaker, transaction
    from idcscan.core.migrate import upgrade
    from idcscan.core.storage_gc import collect_garbage

    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    storage = Storage("s3://idcscan/prod")
    named = storage.put_bytes("slides/aa/aa11.svs", b"named")
    storage.put_bytes("slides/bb/bb22.svs", b"orphan")
    storage.put_bytes("results/job/heatmap.png", b"result")
    with transaction(sessions) as session:
        client, _key = factories.client(session)
        factories.job(session, client, factories.model(session), slide_uri=named)
    try:
        # Objects cannot be made old on S3: a grace in the future makes every object a candidate.
        assert collect_garbage(storage, sessions, grace_s=-3600).blobs == 1
        assert collect_garbage(storage, sessions, grace_s=3600).blobs == 0
    finally:
        engine.dispose()
    assert storage.exists("slides/aa/aa11.svs") and storage.exists("results/job/heatmap.png")
    assert not storage.exists("slides/bb/bb22.svs")
