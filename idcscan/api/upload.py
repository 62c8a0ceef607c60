"""A slide arriving with a job: a multipart upload streamed to a staged file, or a `slide_uri`.

The upload is read in chunks straight off the request stream (werkzeug's sans-IO multipart
decoder), hashed on the way and cut off at the size limit; it is never held whole in memory and
never parsed by Flask's form machinery (which would spool it first). A `slide_uri` must lie inside
`Settings.slide_uri_root`: local paths are resolved (symlinks and `..` included) before the check.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
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
TEXT_FIELDS = ("mpp", "model_id")
SUFFIX = re.compile(r"\.[a-z0-9]{1,8}")


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
    """Writes one file part to a staged file, hashing it and enforcing its size limit."""

    def __init__(self, name: str, staging: Path, limit: int, suffix: str) -> None:
        self.name = name
        self.limit = limit
        self.path = staging / f"upload-{secrets.token_hex(12)}{suffix}"
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
                    sink = _Sink(event.name, staging, limit, safe_suffix(event.filename))
                    text_name = None
                elif isinstance(event, Field) and event.name in TEXT_FIELDS:
                    sink, text_name, text = None, event.name, bytearray()
                elif isinstance(event, (Field, File)):
                    raise Problem(
                        400,
                        "malformed-upload",
                        "Unknown part; expected slide, labels, mpp, model_id.",
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


def safe_suffix(filename: str | None) -> str:
    """The file name's extension alone (readers tell a damaged .svs from a flat TIFF by it);
    the name itself is dropped here and never stored or logged."""
    suffix = PurePosixPath((filename or "").replace("\\", "/")).suffix.lower()
    return suffix if SUFFIX.fullmatch(suffix) else ""


def _abandon(upload: Upload, sink: _Sink | None) -> None:
    if sink is not None:
        sink.handle.close()
        sink.path.unlink(missing_ok=True)
    upload.discard()


def resolve_slide_uri(uri: str, root: str | None) -> str:
    """`uri` made absolute and proven to lie inside `root`; a Problem otherwise."""
    if not root:
        raise Problem(
            422,
            "slide-uri-disabled",
            "This service accepts uploads only (no slide_uri root is configured).",
        )
    outside = Problem(
        422, "slide-uri-outside-root", "The slide_uri is outside the configured storage root."
    )
    root_protocol, root_path = _split(root)
    protocol, path = _split(uri)
    if protocol != root_protocol:
        raise outside
    if protocol == "file":
        base = os.path.realpath(root_path)
        candidate = os.path.realpath(os.path.join(base, path))
        if os.path.commonpath([base, candidate]) != base or candidate == base:
            raise outside
        return candidate
    base = posixpath.normpath("/" + root_path.strip("/"))
    candidate = posixpath.normpath("/" + path)
    if not candidate.startswith(base.rstrip("/") + "/"):
        raise outside
    return f"{protocol}://{candidate.lstrip('/')}"


def _split(uri: str) -> tuple[str, str]:
    if "://" not in uri:
        return "file", uri
    protocol, _, path = uri.partition("://")
    return ("file", path) if protocol == "file" else (protocol, path)
