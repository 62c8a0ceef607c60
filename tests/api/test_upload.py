"""The upload stream and the slide_uri root check, without a server."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from idcscan.api.problems import Problem
from idcscan.api.upload import CHUNK, receive_multipart, resolve_slide_uri
from idcscan.core.errors import InvalidInput

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def _body(slide: bytes, filename: str = "s.svs", **fields: str) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="slide"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + slide
        + b"\r\n"
    )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


class CountingStream(io.BytesIO):
    """Records the size of every read, to prove the body is consumed in bounded chunks."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.reads.append(-1 if size is None else size)
        return super().read(size)


def test_a_large_upload_is_streamed_and_hashed(tmp_path: Path) -> None:
    slide = os.urandom(3 * 1024**2 + 17)
    stream = CountingStream(_body(slide, mpp="0.25"))
    upload = receive_multipart(stream, CONTENT_TYPE, tmp_path, max_slide_bytes=len(slide))
    staged = upload.files["slide"]
    assert staged.sha256 == hashlib.sha256(slide).hexdigest()
    assert staged.size == len(slide)
    assert staged.path.read_bytes() == slide
    assert staged.path.suffix == ""
    assert upload.fields == {"mpp": "0.25"}
    assert max(stream.reads) == CHUNK and len(stream.reads) > 40
    upload.discard()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "body",
    [
        _body(b"x" * 2000),
        _body(b"x" * 10)[:-30],
        _body(b"x" * 10, colour="red"),
        _body(b"x", mpp="1" * 2000),
    ],
    ids=["over-the-limit", "cut-short", "unknown-field", "field-too-long"],
)
def test_a_refused_upload_leaves_no_staged_file(tmp_path: Path, body: bytes) -> None:
    with pytest.raises((Problem, InvalidInput)):
        receive_multipart(io.BytesIO(body), CONTENT_TYPE, tmp_path, max_slide_bytes=1000)
    assert list(tmp_path.iterdir()) == []


def test_no_character_of_the_file_name_reaches_the_staged_file(tmp_path: Path) -> None:
    """L4: the staged name is ours alone; what the file is comes from its content."""
    for name in ["patient-smith.SVS", "scan.mrn12345", "../../x", "a.b c", "noext", "x.vms"]:
        upload = receive_multipart(
            io.BytesIO(_body(b"x", filename=name)), CONTENT_TYPE, tmp_path, 10
        )
        staged = upload.files["slide"].path
        assert staged.name.startswith("upload-") and staged.suffix == "", name
        assert staged.name.removeprefix("upload-").isalnum()
        upload.discard()


def test_slide_uri_is_read_inside_the_clients_folder_from_the_name_alone(tmp_path: Path) -> None:
    root = tmp_path / "root"
    own = root / "client-7"
    assert resolve_slide_uri("cases/a.svs", str(root), 7).parts == ("client-7", "cases", "a.svs")
    assert resolve_slide_uri(f"{own}/cases/a.svs", str(root), 7).parts == (
        "client-7",
        "cases",
        "a.svs",
    )
    assert resolve_slide_uri(f"file://{own}/./a.svs", str(root), 7).parts == ("client-7", "a.svs")
    remote = resolve_slide_uri("s3://bucket/slides/client-7/a.svs", "s3://bucket/slides/", 7)
    assert remote.url == "s3://bucket/slides/client-7/a.svs"
    assert resolve_slide_uri("a.svs", "s3://bucket/slides", 7).url == remote.url
    for uri, base in [
        ("../a.svs", str(root)),
        ("cases/../../client-8/a.svs", str(root)),
        (f"{root}/client-8/a.svs", str(root)),
        (f"{root}/client-70/a.svs", str(root)),
        (f"{own}/../client-8/a.svs", str(root)),
        (str(own), str(root)),
        (str(root), str(root)),
        ("/etc/passwd", str(root)),
        ("a\x00.svs", str(root)),
        ("s3://bucket/slides/client-7/../client-8/a.svs", "s3://bucket/slides"),
        ("s3://bucket/slides-evil/client-7/a.svs", "s3://bucket/slides"),
        ("gs://bucket/slides/client-7/a.svs", "s3://bucket/slides"),
        (f"s3://{own}/a.svs", str(root)),
    ]:
        with pytest.raises(Problem) as refused:
            resolve_slide_uri(uri, base, 7)
        assert refused.value.code == "slide-not-found", uri
    with pytest.raises(Problem) as labels:
        resolve_slide_uri("../a.csv", str(root), 7, "labels")
    assert labels.value.code == "labels-not-found"
