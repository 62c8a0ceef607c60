"""Blob storage for slides and results: keys under one fsspec root, a local folder or s3://bucket/prefix.

Keys are relative, '/'-separated names such as `results/<job_id>/heatmap.png`; `uri(key)` is the
absolute URI stored in the database, which `open_uri` (or `Storage.open`) reads back.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs


def _check_key(key: str) -> str:
    parts = key.replace("\\", "/").split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a storage key (relative, no '..'): {key!r}")
    return "/".join(parts)


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> Path:
    """The file system path of a local URI (a bare path or file://)."""
    if not is_local(uri):
        raise ValueError(f"not a local URI: {uri!r}")
    return Path(uri.removeprefix("file://"))


def open_uri(uri: str, mode: str = "rb") -> IO[Any]:
    """Open any fsspec URI or local path."""
    return fsspec.open(uri, mode).open()


@contextmanager
def as_local_file(uri: str, suffix: str = "") -> Iterator[Path]:
    """A local path for `uri`: the file itself when local, else a temporary download removed after."""
    if is_local(uri):
        yield local_path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="idcscan-") as tmp:
        target = Path(tmp) / ("blob" + suffix)
        with open_uri(uri) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        yield target


class Storage:
    """Keys under one root URL. `Storage(settings.storage)` is what the API and the worker share."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root = str(root).rstrip("/")
        self.fs, self._root = url_to_fs(root)
        self.root = root
        if is_local(root):
            # Private even when created by a process that did not set idcscan's umask.
            Path(self._root).mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, key: str) -> str:
        return f"{self._root}/{_check_key(key)}"

    def uri(self, key: str) -> str:
        """The absolute URI of `key`, as recorded in the database."""
        return f"{self.root}/{_check_key(key)}"

    def key_of(self, uri: str) -> str | None:
        """The key of `uri` if it names something in this storage (as `uri(key)` wrote it)."""
        prefix = f"{self.root}/"
        if not uri.startswith(prefix):
            return None
        try:
            return _check_key(uri[len(prefix) :])
        except ValueError:
            return None

    def open(self, key: str, mode: str = "rb") -> IO[Any]:
        path = self._path(key)
        if "w" in mode or "a" in mode:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        return self.fs.open(path, mode)

    def put_bytes(self, key: str, data: bytes) -> str:
        with self.open(key, "wb") as handle:
            handle.write(data)
        return self.uri(key)

    def put_file(self, local: str | os.PathLike[str], key: str) -> str:
        path = self._path(key)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(local), path)
        return self.uri(key)

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as handle:
            return handle.read()

    def size(self, key: str) -> int:
        """Bytes stored under `key` (without opening it: a file that blocks its reader is sized
        all the same)."""
        return int(self.fs.size(self._path(key)) or 0)

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def delete(self, key: str) -> None:
        """Remove a key or everything under a key prefix; absent is fine."""
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
