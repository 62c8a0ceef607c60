"""Settings: read from `IDCSCAN_*` environment variables in one place, typed and validated.

Unset, every setting gives the embedded mode: a SQLite database, a local storage folder and a
broker that needs no server (Celery's SQLAlchemy transport over SQLite), all inside `data_dir`.
`idcscan settings` prints the table of settings; the README's table is generated from it.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "idcscan"


class Settings(BaseSettings):
    """Every knob of idcscan. Field descriptions are the documentation (see `idcscan settings`)."""

    model_config = SettingsConfigDict(env_prefix="IDCSCAN_", frozen=True, extra="ignore")

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Folder of the embedded defaults (SQLite database, broker, storage). "
        "Default: $XDG_DATA_HOME/idcscan or ~/.local/share/idcscan.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the database, e.g. postgresql+psycopg://user@host/db. "
        "Default: sqlite:///<data_dir>/idcscan.sqlite3.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL, e.g. redis://redis:6379/0. "
        "Default: sqla+sqlite:///<data_dir>/broker.sqlite3 (no server needed).",
    )
    storage_url: str | None = Field(
        default=None,
        description="fsspec URL where slides and results are stored: a local folder or s3://bucket/prefix. "
        "Default: <data_dir>/storage.",
    )
    slide_uri_root: str | None = Field(
        default=None,
        description="Local folder or fsspec URL prefix from which jobs may name a `slide_uri`; "
        "unset, jobs can only upload slides.",
    )
    model_path: Path | None = Field(
        default=None,
        description="ONNX model used by `idcscan score` and registered by the demo when the "
        "registry is empty. Default: the reference model shipped with idcscan.",
    )
    max_upload_bytes: int = Field(
        default=4 * 1024**3, gt=0, description="Largest slide upload accepted, in bytes."
    )
    max_slide_pixels: int = Field(
        default=250_000 * 250_000,
        gt=0,
        description="Largest slide accepted, as width x height at level 0 (decompression-bomb guard).",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Attempts a job gets before it fails as `worker_lost`."
    )
    task_time_limit_s: int = Field(
        default=3600,
        ge=10,
        description="Hard time limit of one scoring task, in seconds. The soft limit is 90% of it "
        "and the broker's visibility timeout is this plus 10 minutes.",
    )
    slide_deadline_min_s: int = Field(
        default=120,
        ge=1,
        description="Least time one slide may take to read and score, in seconds; each slide "
        "gets this plus time for its size (bytes to read, tiles to score), within the soft "
        "limit. A slide past its deadline ends as `timeout`, and a reader hung in a system or C "
        "call is ended with its worker process, which frees the slot.",
    )
    lease_s: int = Field(
        default=60, ge=5, description="How long a worker's claim on a job lasts without renewal."
    )
    reconcile_interval_s: int = Field(
        default=30, ge=1, description="How often the reconciler re-publishes stuck jobs."
    )
    webhook_poll_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="How often the webhook deliverer (beside the reconciler) looks for "
        "completion webhooks due.",
    )
    webhook_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="Time limit of one webhook POST (connect and each read), in seconds.",
    )
    webhook_max_attempts: int = Field(
        default=12,
        ge=1,
        le=50,
        description="Attempts a completion webhook gets before it is given up as `failed`.",
    )
    webhook_backoff_s: float = Field(
        default=10.0,
        gt=0,
        description="Pause after a webhook's first failed attempt; it doubles after each one, "
        "up to `IDCSCAN_WEBHOOK_BACKOFF_MAX_S` (the defaults spread 12 attempts over about 3.4 hours).",
    )
    webhook_backoff_max_s: float = Field(
        default=3600.0, gt=0, description="Longest pause between two attempts of a webhook."
    )
    batch_size: int = Field(default=256, ge=1, description="Tiles per inference batch.")
    reader_threads: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Threads reading, cutting and preprocessing a slide's regions per job while "
        "onnxruntime runs; OpenSlide, Pillow and numpy release the GIL, so they read in parallel.",
    )
    inference_threads: int = Field(
        default=0,
        ge=0,
        description="onnxruntime intra-op threads per worker process; 0 means the CPU count "
        "divided by the worker concurrency.",
    )
    execution_provider: Literal["auto", "cuda", "cpu"] = Field(
        default="auto", description="onnxruntime execution provider: CUDA first when `auto`."
    )
    model_precision: Literal["auto", "fp32"] = Field(
        default="auto",
        description="`auto`: a worker runs the registered variant of its execution provider "
        "(INT8 on the CPU, FP16 on CUDA; `idcscan models variants`), FP32 where there is none; "
        "`fp32`: always the FP32 model.",
    )
    rate_limit: str = Field(
        default="600/minute",
        description="Requests per client, counted after authentication (flask-limiter syntax).",
    )
    rate_limit_per_address: str = Field(
        default="1200/minute",
        description="Requests per client address, counted before authentication, so that a "
        "flood of bad keys is limited too (flask-limiter syntax).",
    )
    rate_limit_storage_url: str = Field(
        default="memory://",
        description="flask-limiter storage: memory:// when embedded, redis://... in production. "
        "With memory:// every API process counts apart: `idcscan api` then counts in the "
        "broker's Redis, or refuses more than one process when the broker is not Redis.",
    )
    trusted_proxies: int = Field(
        default=0,
        ge=0,
        le=5,
        description="Reverse proxies in front of the API whose X-Forwarded-For the API trusts "
        "for the client address (1 behind one proxy); 0 trusts none, so a forged header "
        "changes nothing.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Key that signs the viewer's links (HMAC-SHA256); every API process must "
        "have the same. Changing it ends every link given out. Default: a random key made once "
        "in <data_dir>/secret_key.",
    )
    viewer_link_ttl_s: int = Field(
        default=3600,
        ge=60,
        le=86400,
        description="How long a viewer link minted by the API opens its job, in seconds.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of every idcscan process."
    )

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _check_urls(self) -> Settings:
        if self.database_url is not None and "://" not in self.database_url:
            raise ValueError(f"IDCSCAN_DATABASE_URL is not a URL: {self.database_url!r}")
        if self.broker_url is not None and "://" not in self.broker_url:
            raise ValueError(f"IDCSCAN_BROKER_URL is not a URL: {self.broker_url!r}")
        if self.slide_uri_root is not None and _overlap(self.slide_uri_root, self.storage):
            # Otherwise a client could name another tenant's stored slide or results as its slide.
            raise ValueError(
                "IDCSCAN_SLIDE_URI_ROOT must not contain or lie inside the storage "
                f"({self.storage}): jobs could then read other clients' files"
            )
        return self

    # Derived values: one place says what "embedded" means.

    @cached_property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'idcscan.sqlite3'}"

    @cached_property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.sqlite3'}"

    @property
    def broker_is_redis(self) -> bool:
        return self.broker.startswith(("redis://", "rediss://"))

    @cached_property
    def storage(self) -> str:
        return self.storage_url or str(self.data_dir / "storage")

    @property
    def embedded(self) -> bool:
        """True when nothing points at a server: the database and broker are local files."""
        return self.database.startswith("sqlite") and self.broker.startswith("sqla+sqlite")

    @property
    def soft_time_limit_s(self) -> int:
        return int(self.task_time_limit_s * 0.9)

    @property
    def visibility_timeout_s(self) -> int:
        return self.task_time_limit_s + 600


def _overlap(a: str, b: str) -> bool:
    """Whether one location contains the other (local paths resolved, URLs compared by prefix)."""

    def normal(location: str) -> str:
        if "://" in location and not location.startswith("file://"):
            return location.rstrip("/") + "/"
        return os.path.realpath(location.removeprefix("file://")).rstrip("/") + "/"

    first, second = normal(a), normal(b)
    return first.startswith(second) or second.startswith(first)


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (tests pass their own)."""
    return Settings(**overrides)  # type: ignore[arg-type]
