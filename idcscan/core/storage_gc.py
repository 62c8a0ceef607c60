"""Garbage collection of stored slides and labels: a blob goes once no job names it and it is old.

Slides and labels are stored under their SHA-256, so one blob may be named by the jobs of several
clients. A request therefore never deletes a blob, even one it stored itself before failing: the
same bytes may be in another client's job by then. This collector removes
- `slides/` and `labels/` blobs that no job row names, once older than the grace period;
- `staging/` files older than the grace period (uploads of requests that died half-way).

Age is the file's modification time. Storing the same bytes again refreshes it
(`BlobStore.store`), so a blob a request is about to name in its job is never old enough. On a
local store a candidate is renamed aside first and its age read again: a request that stored it
in between made it young, and it is put back. Object storage has no atomic rename; there the age
is read again just before the delete, which narrows the window to that one call.

`idcscan storage gc` runs it once; `idcscan scheduler` runs it every `GC_INTERVAL_S`.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, union
from sqlalchemy.orm import Session, sessionmaker

from idcscan.core.db import Job
from idcscan.core.storage import Storage, is_local

log = logging.getLogger(__name__)

# Longer than any request takes from storing a blob to committing its job (seconds), and than
# any pause of an upload that is still alive (the proxy drops a body idle for 60 s).
GRACE_S = 3600
GC_INTERVAL_S = 3600
BLOB_FOLDERS = ("slides", "labels")
STAGING = "staging"


@dataclass(frozen=True)
class Collected:
    blobs: int
    staged: int
    bytes: int


def collect_garbage(
    storage: Storage, sessions: sessionmaker[Session], grace_s: float = GRACE_S
) -> Collected:
    """Remove unreferenced blobs and stale staged files older than `grace_s` seconds."""
    cutoff = time.time() - grace_s
    # Listed before the job rows are read: a blob stored after this listing is not a candidate.
    listed = {folder: _old_files(storage, folder, cutoff) for folder in (*BLOB_FOLDERS, STAGING)}
    named = _named_keys(storage, sessions)
    blobs = staged = freed = 0
    for folder, files in listed.items():
        for key, size in files.items():
            if folder != STAGING and key in named:
                continue
            if _remove_if_old(storage, key, cutoff):
                freed += size
                if folder == STAGING:
                    staged += 1
                else:
                    blobs += 1
    if blobs or staged:
        log.info("storage gc: removed %d blobs and %d staged files", blobs, staged)
    return Collected(blobs, staged, freed)


def _old_files(storage: Storage, folder: str, cutoff: float) -> dict[str, int]:
    """Keys under `folder` last modified before `cutoff`, with their sizes."""
    base = storage.fs._strip_protocol(storage.uri(folder))
    try:
        found = storage.fs.find(base, detail=True)
    except FileNotFoundError:
        return {}
    old: dict[str, int] = {}
    for path, info in found.items():
        modified = _modified(info)
        if info.get("type") == "file" and modified is not None and modified < cutoff:
            old[f"{folder}/{path[len(base) :].lstrip('/')}"] = int(info.get("size") or 0)
    return old


def _modified(info: dict[str, Any]) -> float | None:
    """A listing's modification time in epoch seconds (local `mtime`, S3 `LastModified`)."""
    value = info.get("mtime", info.get("LastModified"))
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if isinstance(value, int | float) else None


def _named_keys(storage: Storage, sessions: sessionmaker[Session]) -> set[str]:
    """Every storage key a job row names (one pass over the jobs, whatever their status)."""
    uris = union(
        select(Job.slide_uri.label("uri")),
        select(Job.labels_uri.label("uri")).where(Job.labels_uri.is_not(None)),
    ).subquery()
    with sessions() as session:
        keys = (storage.key_of(uri) for uri in session.scalars(select(uris.c.uri)))
        return {key for key in keys if key is not None}


def _remove_if_old(storage: Storage, key: str, cutoff: float) -> bool:
    if not is_local(storage.root):
        info = storage.fs.info(storage.fs._strip_protocol(storage.uri(key)))
        modified = _modified(info)
        if modified is None or modified >= cutoff:
            return False
        storage.delete(key)
        return True
    path = storage.fs._strip_protocol(storage.uri(key))
    aside = f"{path}.gc-{secrets.token_hex(4)}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # removed meanwhile (another collector)
        return False
    if os.stat(aside).st_mtime >= cutoff:  # stored again just now: a job is about to name it
        os.replace(aside, path)
        return False
    os.unlink(aside)
    return True
