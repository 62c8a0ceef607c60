from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from idcscan.core.settings import Settings


def test_defaults_are_embedded_inside_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DATABASE_URL", "BROKER_URL", "STORAGE_URL"):
        monkeypatch.delenv(f"IDCSCAN_{name}", raising=False)
    monkeypatch.setenv("IDCSCAN_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.database == f"sqlite:///{tmp_path}/idcscan.sqlite3"
    assert settings.broker == f"sqla+sqlite:///{tmp_path}/broker.sqlite3"
    assert settings.storage == str(tmp_path / "storage")
    assert settings.embedded


def test_environment_overrides_and_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDCSCAN_DATABASE_URL", "postgresql+psycopg://u@db/idcscan")
    monkeypatch.setenv("IDCSCAN_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("IDCSCAN_BATCH_SIZE", "512")
    settings = Settings()
    assert settings.database == "postgresql+psycopg://u@db/idcscan"
    assert settings.batch_size == 512
    assert not settings.embedded


def test_time_limits_derive_from_one_number() -> None:
    settings = Settings(task_time_limit_s=1000)
    assert settings.soft_time_limit_s < settings.task_time_limit_s < settings.visibility_timeout_s


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IDCSCAN_BATCH_SIZE", "0"),
        ("IDCSCAN_DATABASE_URL", "not a url"),
        ("IDCSCAN_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_values_are_rejected(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize("root", ["{data}", "{data}/storage", "{data}/storage/slides"])
def test_slide_uri_root_may_not_overlap_the_storage(root: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="must not contain or lie inside the storage"):
        Settings(data_dir=tmp_path, slide_uri_root=root.format(data=tmp_path))


def test_slide_uri_root_beside_the_storage_is_fine(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", slide_uri_root=str(tmp_path / "scanner-share"))
    assert settings.slide_uri_root == str(tmp_path / "scanner-share")
    s3 = Settings(storage_url="s3://idcscan/storage", slide_uri_root="s3://idcscan/scans")
    assert s3.slide_uri_root == "s3://idcscan/scans"
