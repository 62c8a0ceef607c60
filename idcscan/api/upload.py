"""A slide arriving with a job: a multipart upload streamed to a staged file, or a `slide_uri`.

The upload is read in chunks straight off the request stream (werkzeug's sans-IO multipart
decoder), hashed on the way and cut off at the size limit; it is never held whole in memory and
never parsed by Flask's form machinery (which would spool it first).

A `slide_uri` names a file in the caller's own folder of `Settings.slide_uri_root`
(`<root>/client-<id>/`). It is opened without following any symlink and copied into a staged
file exactly like an upload, so from there on both take one path: probe, hash, store.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from idcscan.api.problems import Problem
from idcscan.core.errors import InvalidInput

CHUNK = 1 << 16
MAX_DECODER_BUFFER = 4 * CHUNK
"""What the multipart decoder may hold while it looks for a boundary or the end of a part's
headers; file data passes through it. Without a bound a body whose boundary never comes is
buffered whole."""
MAX_FIELD_BYTES = 1024
MAX_LABELS_BYTES = 64 * 1024**2
FILE_FIELDS = ("slide", "labels")
TEXT_FIELDS = ("mpp", "model_id", "callback_url")


@dataclass
class StagedFile:
    """A file written to local disk while its SHA-256 was computed. The caller removes it."""

    path: Path
    sha256: str
    size: int


@dataclass
class Upload:
    files: dict[str, StagedFile] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        for staged in self.files.values():
            staged.path.unlink(missing_ok=True)


class _Sink:
    """Writes one file part to a staged file, hashing it and enforcing its size limit.

    The staged name has no suffix: the client's file name is never used. What the file is comes
    from its content (`idcscan.core.slides`), and its stored name from that verdict.
    """

    def __init__(self, name: str, staging: Path, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.path = staging / f"upload-{secrets.token_hex(12)}"
        self.handle: IO[bytes] = open(self.path, "wb")  # noqa: SIM115 (closed in finish)
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            what = "slide" if self.name == "slide" else "labels file"
            raise InvalidInput(
                f"The {what} is larger than the {self.limit} bytes allowed.", "upload-too-large"
            )
        self.digest.update(data)
        self.handle.write(data)

    def finish(self) -> StagedFile:
        self.handle.close()
        return StagedFile(self.path, self.digest.hexdigest(), self.size)


def receive_multipart(
    stream: IO[bytes], content_type: str, staging: Path, max_slide_bytes: int
) -> Upload:
    """Stream a multipart body into staged files; on any error nothing staged remains."""
    _, options = parse_options_header(content_type)
    boundary = options.get("boundary")
    if not boundary:
        raise Problem(400, "malformed-upload", "multipart/form-data without a boundary.")
    decoder = MultipartDecoder(
        boundary.encode(), max_form_memory_size=MAX_DECODER_BUFFER, max_parts=8
    )
    upload = Upload()
    sink: _Sink | None = None
    text_name: str | None = None
    text = bytearray()
    try:
        while True:
            chunk = _read(stream)
            decoder.receive_data(chunk or None)
            event = decoder.next_event()
            while not isinstance(event, (NeedData, Epilogue)):
                if isinstance(event, File) and event.name in FILE_FIELDS:
                    if event.name in upload.files or sink is not None:
                        raise Problem(
                            400, "malformed-upload", f"More than one `{event.name}` part."
                        )
                    limit = max_slide_bytes if event.name == "slide" else MAX_LABELS_BYTES
                    sink = _Sink(event.name, staging, limit)
                    text_name = None
                elif isinstance(event, Field) and event.name in TEXT_FIELDS:
                    sink, text_name, text = None, event.name, bytearray()
                elif isinstance(event, (Field, File)):
                    raise Problem(
                        400,
                        "malformed-upload",
                        "Unknown part; expected slide, labels, mpp, model_id, callback_url.",
                    )
                elif isinstance(event, Data):
                    if sink is not None:
                        sink.write(event.data)
                        if not event.more_data:
                            upload.files[sink.name] = sink.finish()
                            sink = None
                    elif text_name is not None:
                        text += event.data
                        if len(text) > MAX_FIELD_BYTES:
                            raise Problem(
                                400, "malformed-upload", f"The `{text_name}` field is too long."
                            )
                        if not event.more_data:
                            upload.fields[text_name] = text.decode("utf-8", "replace").strip()
                            text_name = None
                event = decoder.next_event()
            if isinstance(event, Epilogue):
                break
            if not chunk:
                raise Problem(400, "malformed-upload", "The multipart body ends early.")
    except (ValueError, RequestEntityTooLarge) as exc:
        # The decoder's verdict: too many parts, or no boundary (or end of headers) in its buffer.
        _abandon(upload, sink)
        raise Problem(400, "malformed-upload", "The multipart body is malformed.") from exc
    except BaseException:
        _abandon(upload, sink)
        raise
    if "slide" not in upload.files:
        upload.discard()
        raise Problem(422, "missing-slide", "Send the slide as the multipart part `slide`.")
    return upload


def _read(stream: IO[bytes]) -> bytes:
    """The next chunk of the body; past the route's limit (werkzeug counts a chunked body's
    bytes too) the upload is too large."""
    try:
        return stream.read(CHUNK)
    except RequestEntityTooLarge:
        raise InvalidInput("The upload is larger than allowed.", "upload-too-large") from None


def _abandon(upload: Upload, sink: _Sink | None) -> None:
    if sink is not None:
        sink.handle.close()
        sink.path.unlink(missing_ok=True)
    upload.discard()


# --- slide_uri: a file in the client's own folder, copied into storage at submit ---------------


def client_folder(client_id: int) -> str:
    """A client's folder under the slide_uri root. The id is stable and a safe file name, which a
    client's name (free text, shared by nobody's naming rules) is not."""
    return f"client-{client_id}"


@dataclass(frozen=True)
class SharedFile:
    """A file a job names on the slide_uri root, inside its client's folder; not opened yet.

    `parts` are plain names (the client's folder first); `root` is the local folder, resolved
    once (an operator may mount it through a symlink), or the URL prefix of object storage.
    """

    protocol: str
    root: str
    parts: tuple[str, ...]
    absent: Problem

    @property
    def url(self) -> str:
        return f"{self.protocol}://{'/'.join([self.root.strip('/'), *self.parts])}"


def _absent(what: str) -> Problem:
    # One answer for a name that is absent, another client's, a symlink, a folder or not a
    # name at all: whatever lies outside the caller's folder must not be told apart.
    if what == "labels":
        return Problem(422, "labels-not-found", "No labels file by that name in your slide folder.")
    return Problem(422, "slide-not-found", "No slide by that name in your slide folder.")


def resolve_slide_uri(
    uri: str, root: str | None, client_id: int, what: str = "slide"
) -> SharedFile:
    """Where `uri` points in the client's folder of `root`, decided from the name alone.

    A relative name is taken inside the client's folder; an absolute path or URL must spell out
    that folder. `..` is refused rather than normalised, so the name means one thing only. The
    file system is not consulted here: `stage_shared_file` opens the name without following
    any symlink, so whether another client's file exists is never visible.
    """
    if not root:
        raise Problem(
            422,
            "slide-uri-disabled",
            "This service accepts uploads only (no slide_uri root is configured).",
        )
    absent = _absent(what)
    if "\x00" in uri:
        raise absent
    root_protocol, root_path = _split(root)
    if root_protocol == "file":
        base = os.path.realpath(root_path)
        spellings = {os.path.normpath(os.path.abspath(root_path)), base}
    else:
        base = root_path.strip("/")
        spellings = {base}
    folder = client_folder(client_id)
    if "://" not in uri and not uri.startswith("/"):
        named = [folder, *_names(uri)]
    else:
        protocol, path = _split(uri)
        if protocol != root_protocol:
            raise absent
        names = _names(path)
        below = next(
            (
                names[len(prefix) :]
                for prefix in (_names(spelling) for spelling in spellings)
                if names[: len(prefix)] == prefix
            ),
            None,
        )
        if below is None or below[:1] != [folder]:
            raise absent
        named = below
    if ".." in named or len(named) < 2:
        raise absent
    return SharedFile(root_protocol, base, tuple(named), absent)


def stage_shared_file(shared: SharedFile, staging: Path, limit: int, what: str) -> StagedFile:
    """Copy a named file into a staged file, as if it had been uploaded; a Problem if it is not
    a regular file reached without a symlink.

    Copying (rather than recording where the file lies) means the worker scores exactly the
    bytes probed here: the share can change or be swapped after submission without effect, and
    workers need no access to the share at all.
    """
    source = _open_local(shared) if shared.protocol == "file" else _open_remote(shared)
    with source as (handle, size):
        if size > limit:
            raise _too_large(what, limit)
        sink = _Sink(what, staging, limit)
        try:
            while block := handle.read(CHUNK):
                sink.write(block)
        except BaseException:
            _abandon(Upload(), sink)
            raise
        return sink.finish()


def _too_large(what: str, limit: int) -> InvalidInput:
    noun = "slide" if what == "slide" else "labels file"
    return InvalidInput(f"The {noun} is larger than the {limit} bytes allowed.", "upload-too-large")


@contextmanager
def _open_local(shared: SharedFile) -> Iterator[tuple[IO[bytes], int]]:
    # Walk from the root one name at a time with O_NOFOLLOW: a symlink anywhere below the root
    # (the client's folder included) is refused at the moment it is opened, so no check-then-open
    # window exists. O_NONBLOCK keeps a FIFO from stalling the request; only regular files pass.
    folder_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        directory = os.open(shared.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise shared.absent from None
    try:
        for name in shared.parts[:-1]:
            inner = os.open(name, folder_flags, dir_fd=directory)
            os.close(directory)
            directory = inner
        fd = os.open(
            shared.parts[-1],
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            dir_fd=directory,
        )
    except OSError:
        raise shared.absent from None
    finally:
        os.close(directory)
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        os.close(fd)
        raise shared.absent
    with os.fdopen(fd, "rb") as handle:
        yield handle, status.st_size


@contextmanager
def _open_remote(shared: SharedFile) -> Iterator[tuple[IO[bytes], int]]:
    # Object storage has no symlinks; the prefix check in resolve_slide_uri is the whole scope.
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(shared.url)
        info = fs.info(path)
        if info.get("type") != "file":
            raise shared.absent
        handle = fs.open(path, "rb")
    except (OSError, ValueError):
        raise shared.absent from None
    with handle:
        yield handle, int(info.get("size") or 0)


def _names(path: str) -> list[str]:
    return [name for name in path.split("/") if name not in ("", ".")]


def _split(uri: str) -> tuple[str, str]:
    if "://" not in uri:
        return "file", uri
    protocol, _, path = uri.partition("://")
    return ("file", path) if protocol == "file" else (protocol, path)
