"""Content-addressed slides and labels on the shared blob storage (`idcscan.core.storage`).

An upload (or a copy of a `slide_uri` file) is staged in a local file while it is hashed and
probed, then stored under its SHA-256: the same slide uploaded twice, by any clients, is stored
once. On a local store, staging lives inside the store so that storing is an atomic rename, never
a second copy of a multi-gigabyte file. Nothing here deletes a blob: another client's job may
name it; `idcscan.core.storage_gc` removes blobs no job names.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from idcscan.core.storage import Storage, is_local, local_path, open_uri

CHUNK = 1 << 20


class BlobStore:
    def __init__(self, root: str) -> None:
        self.storage = Storage(root)
        self.local = is_local(self.storage.root)

    def uri(self, key: str) -> str:
        return self.storage.uri(key)

    def staging_dir(self) -> Path:
        staging = local_path(self.uri("staging")) if self.local else Path(tempfile.gettempdir())
        staging.mkdir(parents=True, exist_ok=True)
        return staging

    def store(self, staged: Path, key: str) -> None:
        """Move a staged file to `key`, even when that content is stored already.

        Storing again refreshes the blob's age, which `collect_garbage` reads: a blob that a
        request is about to name in its job is never old enough to be collected.
        """
        if self.local:
            target = local_path(self.uri(key))
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)  # atomic: a reader sees the old or the new, same bytes
        else:
            self.storage.put_file(staged, key)
            staged.unlink(missing_ok=True)

    def iter_bytes(self, uri: str) -> Iterator[bytes]:
        """Stream a stored file (a URI the worker recorded) in chunks."""
        with open_uri(uri) as handle:
            while block := handle.read(CHUNK):
                yield block
