"""`slide_uri` is scoped per client: each names files in its own folder of the slide_uri root,
never through a symlink, and another client's names answer exactly as absent ones do.

The hostile names are sent over HTTP to a real server, against real files, folders, symlinks and
a FIFO on disk; each refusal leaves no job row and no stored file, and the service still works.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

import pytest
import requests

from idcscan.core.db import Job
from idcscan.core.storage import Storage, local_path

from .conftest import KOMBU_NOLOAD, Service, plain_tiff

pytestmark = [pytest.mark.integration, KOMBU_NOLOAD]


def tenant(service: Service) -> tuple[str, Path]:
    """A new client's key and its folder under the slide_uri root (made as an operator would)."""
    client_id, key = service.new_client()
    # The documented layout: <root>/client-<id>/
    folder = Path(service.settings.slide_uri_root or "") / f"client-{client_id}"
    folder.mkdir()
    return key, folder


def refusal(response: requests.Response) -> tuple[int, str, str]:
    assert response.headers["Content-Type"] == "application/problem+json", response.text
    body = response.json()
    return response.status_code, body["type"], body["detail"]


NOT_FOUND = (
    422,
    "urn:idcscan:problem:slide-not-found",
    "No slide by that name in your slide folder.",
)


def assert_nothing_left(service: Service) -> None:
    assert service.job_count() == 0
    assert service.stored_files() == []


def test_a_slide_uri_names_a_file_in_the_clients_own_folder(service: Service) -> None:
    key, folder = tenant(service)
    (folder / "cases").mkdir()
    slide = plain_tiff(folder / "cases" / "case.tiff", mpp=4.0)
    digest = hashlib.sha256(slide.read_bytes()).hexdigest()
    for uri in ("cases/case.tiff", str(slide), f"file://{slide}"):
        response = service.post("/v1/jobs", key, json={"slide_uri": uri})
        assert response.status_code == 202, (uri, response.text)
        job = response.json()
        assert job["slide_format"] == "generic-tiff" and job["slide_sha256"] == digest
        # The job names the service's own copy: a later change to the share cannot reach it.
        with service.db() as session:
            row = session.get(Job, uuid.UUID(job["id"]))
            assert row is not None
            stored = local_path(row.slide_uri)
        assert stored.is_relative_to(Path(service.settings.storage))
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest


def test_another_clients_slide_answers_exactly_as_an_absent_one(service: Service) -> None:
    owner_key, owner = tenant(service)
    plain_tiff(owner / "case.tiff", mpp=4.0)
    intruder_key, intruder = tenant(service)
    names = []
    for name in ("case.tiff", "absent.tiff"):  # the first exists (the owner's), the second not
        names += [
            str(owner / name),
            f"file://{owner / name}",
            f"../{owner.name}/{name}",
            f"{intruder}/../{owner.name}/{name}",
        ]
    answers = {}
    # (A NUL is refused by the schema for any name, whatever exists: tests/api/test_bad_input.py.)
    for uri in [*names, "absent.tiff", "../../../etc/passwd", "s3://bucket/x.svs"]:
        response = service.post("/v1/jobs", intruder_key, json={"slide_uri": uri})
        answers[uri] = refusal(response)
    assert set(answers.values()) == {NOT_FOUND}, answers
    assert_nothing_left(service)
    # The owner still scores its slide; the service answers as before.
    accepted = service.post("/v1/jobs", owner_key, json={"slide_uri": "case.tiff"})
    assert accepted.status_code == 202, accepted.text


def test_no_symlink_fifo_or_folder_is_followed_or_read(service: Service, tmp_path: Path) -> None:
    owner_key, owner = tenant(service)
    plain_tiff(owner / "case.tiff", mpp=4.0)
    outside = plain_tiff(tmp_path / "outside.tiff", mpp=4.0)
    key, folder = tenant(service)
    (folder / "to-owner.tiff").symlink_to(owner / "case.tiff")
    (folder / "owner-folder").symlink_to(owner, target_is_directory=True)
    (folder / "to-outside.tiff").symlink_to(outside)
    (folder / "dangling.tiff").symlink_to(owner / "absent.tiff")
    (folder / "relative.tiff").symlink_to(Path("..") / owner.name / "case.tiff")
    (folder / "cases").mkdir()
    os.mkfifo(folder / "pipe.tiff")  # opening a FIFO for reading would wait for a writer
    uris = [
        "to-owner.tiff",
        "owner-folder/case.tiff",
        "to-outside.tiff",
        "dangling.tiff",
        "relative.tiff",
        "cases",
        "pipe.tiff",
        "",
    ]
    started = time.monotonic()
    answers = {
        uri: refusal(service.post("/v1/jobs", key, json={"slide_uri": uri or "."})) for uri in uris
    }
    assert set(answers.values()) == {NOT_FOUND}, answers
    assert time.monotonic() - started < 30
    assert_nothing_left(service)
    # The owner's slide itself is still there and scored on request.
    accepted = service.post("/v1/jobs", owner_key, json={"slide_uri": "case.tiff"})
    assert accepted.status_code == 202, accepted.text


def test_the_root_itself_may_be_a_symlink(serve, service_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # An operator's mount point: the root is the operator's choice, only what lies below is not.
    linked_root = tmp_path / "linked-root"
    linked_root.symlink_to(Path(service_settings.slide_uri_root))
    service = serve(service_settings.model_copy(update={"slide_uri_root": str(linked_root)}))
    key, folder = tenant(service)
    plain_tiff(folder / "case.tiff", mpp=4.0)
    real = Path(service_settings.slide_uri_root) / folder.name / "case.tiff"
    for uri in ("case.tiff", str(linked_root / folder.name / "case.tiff"), str(real)):
        response = service.post("/v1/jobs", key, json={"slide_uri": uri})
        assert response.status_code == 202, (uri, response.text)


def test_labels_uri_is_scoped_like_the_slide(service: Service) -> None:
    _owner_key, owner = tenant(service)
    (owner / "labels.csv").write_text("x,y,label\n0,0,1\n")
    key, folder = tenant(service)
    plain_tiff(folder / "case.tiff", mpp=4.0)
    answers = {
        uri: refusal(
            service.post("/v1/jobs", key, json={"slide_uri": "case.tiff", "labels_uri": uri})
        )
        for uri in (str(owner / "labels.csv"), str(owner / "absent.csv"), "absent.csv", ".")
    }
    assert set(answers.values()) == {
        (
            422,
            "urn:idcscan:problem:labels-not-found",
            "No labels file by that name in your slide folder.",
        )
    }, answers
    assert_nothing_left(service)


def test_a_slide_uri_over_the_size_limit_is_413_and_leaves_nothing(service: Service) -> None:
    key, folder = tenant(service)
    with (folder / "huge.svs").open("wb") as handle:
        handle.truncate(service.settings.max_upload_bytes + 1)
    code, problem, _detail = refusal(service.post("/v1/jobs", key, json={"slide_uri": "huge.svs"}))
    assert (code, problem) == (413, "urn:idcscan:problem:upload-too-large")
    assert_nothing_left(service)


def test_the_job_keeps_what_the_api_saw_when_the_share_changes(service: Service) -> None:
    key, folder = tenant(service)
    slide = plain_tiff(folder / "case.tiff", mpp=4.0)
    original = slide.read_bytes()
    job = service.post("/v1/jobs", key, json={"slide_uri": "case.tiff"}).json()
    # Swapped after the API's check: a symlink to another file, then different bytes.
    slide.unlink()
    slide.symlink_to(plain_tiff(folder / "other.tiff", mpp=2.0))
    with service.db() as session:
        row = session.get(Job, uuid.UUID(job["id"]))
        assert row is not None
        stored = Storage(service.settings.storage)
        key_in_storage = row.slide_uri.removeprefix(stored.root + "/")
        assert stored.read_bytes(key_in_storage) == original
