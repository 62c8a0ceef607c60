"""Blob storage: keys under a root, local here (s3:// goes through the same fsspec calls)."""

from __future__ import annotations

from pathlib import Path

import pytest

from idcscan.core.storage import Storage, as_local_file, open_uri


def test_put_read_exists_delete(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "store")
    uri = storage.put_bytes("results/job/heatmap.png", b"png")
    assert uri == f"{tmp_path / 'store'}/results/job/heatmap.png"
    assert (
        storage.exists("results/job/heatmap.png")
        and storage.read_bytes("results/job/heatmap.png") == b"png"
    )
    with open_uri(uri) as handle:
        assert handle.read() == b"png"
    source = tmp_path / "slide.svs"
    source.write_bytes(b"slide")
    storage.put_file(source, "slides/a.svs")
    with storage.open("slides/a.svs") as handle:
        assert handle.read() == b"slide"
    with as_local_file(storage.uri("slides/a.svs")) as local:
        assert local.read_bytes() == b"slide"
    storage.delete("results/job")
    assert not storage.exists("results/job/heatmap.png")
    storage.delete("results/job")  # absent is fine


@pytest.mark.parametrize("key", ["../escape", "/absolute", "a/../../b", "", "a//b"])
def test_keys_stay_under_the_root(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        Storage(tmp_path).uri(key)
