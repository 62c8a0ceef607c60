"""Storage garbage collection on real files and real job rows (SQLite and PostgreSQL): a blob goes
only once no job names it and it is older than the grace period; `idcscan storage gc` and the
scheduler both run it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from idcscan.core.db import make_engine, make_sessionmaker, transaction
from idcscan.core.settings import Settings, get_settings
from idcscan.core.storage import Storage
from idcscan.core.storage_gc import GRACE_S, _old_files, _remove_if_old, collect_garbage
from tests import factories
from tests.processes import idcscan_cli

pytestmark = pytest.mark.integration

HOUR_AND_A_BIT = GRACE_S + 60


@pytest.fixture
def settings(migrated_url: str, tmp_path: Path) -> Settings:
    return get_settings(data_dir=tmp_path / "data", database_url=migrated_url)


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.database)
    yield make_sessionmaker(engine)
    engine.dispose()


def blob(storage: Storage, key: str, age_s: float = 0) -> Path:
    storage.put_bytes(key, key.encode())
    path = Path(storage.uri(key))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def job_naming(sessions: sessionmaker[Session], slide_uri: str, labels_uri: str | None) -> None:
    with transaction(sessions) as session:
        client, _key = factories.client(session)
        factories.job(
            session, client, factories.model(session), slide_uri=slide_uri, labels_uri=labels_uri
        )


def test_only_old_blobs_no_job_names_are_removed(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    storage = Storage(settings.storage)
    named_slide = blob(storage, "slides/aa/aa11.svs", HOUR_AND_A_BIT)
    named_labels = blob(storage, "labels/bb/bb22.csv", HOUR_AND_A_BIT)
    orphan_slide = blob(storage, "slides/cc/cc33.tiff", HOUR_AND_A_BIT)
    orphan_labels = blob(storage, "labels/dd/dd44.geojson", HOUR_AND_A_BIT)
    young_orphan = blob(storage, "slides/ee/ee55.svs", 60)
    stale_upload = blob(storage, "staging/upload-0123.svs", HOUR_AND_A_BIT)
    live_upload = blob(storage, "staging/upload-4567.svs", 5)
    result = blob(storage, "results/job/heatmap.png", HOUR_AND_A_BIT)
    job_naming(sessions, storage.uri("slides/aa/aa11.svs"), storage.uri("labels/bb/bb22.csv"))

    done = collect_garbage(storage, sessions)

    assert (done.blobs, done.staged) == (2, 1)
    assert done.bytes == sum(
        len(k) for k in ("slides/cc/cc33.tiff", "labels/dd/dd44.geojson", "staging/upload-0123.svs")
    )
    for kept in (named_slide, named_labels, young_orphan, live_upload, result):
        assert kept.exists(), kept
    for gone in (orphan_slide, orphan_labels, stale_upload):
        assert not gone.exists(), gone
    assert collect_garbage(storage, sessions).blobs == 0


def test_a_blob_stored_again_during_collection_is_put_back(settings: Settings) -> None:
    # A request that finds the same bytes while the collector runs stores them again, which
    # makes the blob young; the collector, having listed it as old, must leave it.
    storage = Storage(settings.storage)
    path = blob(storage, "slides/ff/ff66.svs", HOUR_AND_A_BIT)
    cutoff = time.time() - GRACE_S
    assert "slides/ff/ff66.svs" in _old_files(storage, "slides", cutoff)
    os.utime(path)  # what BlobStore.store does to an existing blob: a fresh copy in its place
    assert _remove_if_old(storage, "slides/ff/ff66.svs", cutoff) is False
    assert path.read_bytes() == b"slides/ff/ff66.svs"
    assert [p.name for p in path.parent.iterdir()] == ["ff66.svs"]


def test_the_command_and_the_scheduler_collect(
    settings: Settings, sessions: sessionmaker[Session], migrated_url: str
) -> None:
    storage = Storage(settings.storage)
    env = {"IDCSCAN_DATA_DIR": str(settings.data_dir), "IDCSCAN_DATABASE_URL": migrated_url}
    orphan = blob(storage, "slides/ab/ab12.svs", HOUR_AND_A_BIT)
    young = blob(storage, "slides/cd/cd34.svs", 120)
    out = idcscan_cli(env, "storage", "gc")
    assert out.strip().splitlines()[-1] == (
        f"storage gc: removed 1 blobs no job names and 0 stale staged files, {len('slides/ab/ab12.svs')} bytes"
    )
    assert not orphan.exists() and young.exists()
    idcscan_cli(env, "storage", "gc", "--grace-s", "60")
    assert not young.exists()

    # The scheduler's loop collects on its first round.
    orphan = blob(storage, "labels/ef/ef56.csv", HOUR_AND_A_BIT)
    stop = threading.Event()
    quick = settings.model_copy(update={"reconcile_interval_s": 1})
    from idcscan.worker.reconciler import run_forever

    loop = threading.Thread(target=run_forever, args=(quick, stop), daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + 20
        while orphan.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        loop.join(10)
    assert not orphan.exists()
