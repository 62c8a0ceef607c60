"""Database tables, engine and sessions. PostgreSQL in production, SQLite embedded; same code.

The schema changes only through Alembic migrations (`idcscan/migrations`); a test checks that
autogenerate finds no difference between these tables and the migrations.

Keys follow the queries: a client lists its jobs newest first (`ix_jobs_client_id_created_at`),
the reconciler scans by status and lease (`ix_jobs_status_lease_expires_at`), and tile scores
are keyed by (job, row, col): a rerun deletes the job's rows and inserts its own in one
transaction, so it replaces instead of adding. Every change of a job's status goes through
`idcscan.core.jobstate`.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    Uuid,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

# One naming convention from the first revision, so migrations can name every constraint.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a real 64-bit key.
BigIntKey = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSON,
    }


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class ErrorKind(enum.StrEnum):
    """Why a job failed; stable names that clients can branch on."""

    INVALID_INPUT = "invalid_input"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"
    INTERNAL = "internal"


class DeliveryStatus(enum.StrEnum):
    """Where a completion webhook stands: waiting for its next attempt, received (a 2xx), or
    given up after the last attempt."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Role(enum.StrEnum):
    CLIENT = "client"
    ADMIN = "admin"


def _in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Client(Base):
    """A hospital system (or an operator) holding one API key, stored hashed, found by prefix."""

    __tablename__ = "clients"
    __table_args__ = (CheckConstraint(_in("role", Role), name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16), default=Role.CLIENT.value)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    webhook_secret: Mapped[str | None] = mapped_column(String(64))
    """Signs this client's completion webhooks (`whsec_...`); kept in clear, since signing needs
    it. Null until an admin first sets the client's webhook allow-list."""
    webhook_prefixes: Mapped[list[str] | None] = mapped_column(JSON)
    """URL prefixes a job's `callback_url` must start with (set by an admin); null or empty:
    this client's jobs name no callback."""

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class Model(Base):
    """A registered ONNX model, its tile contract and its figures on its own test patients."""

    __tablename__ = "models"
    __table_args__ = (
        # At most one active model: a partial unique index, on PostgreSQL and SQLite alike.
        Index(
            "uq_models_active",
            "active",
            unique=True,
            postgresql_where=text("active"),
            sqlite_where=text("active"),
        ),
        CheckConstraint("threshold >= 0 AND threshold <= 1", name="threshold"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(100), unique=True)
    architecture: Mapped[str] = mapped_column(String(50))
    onnx_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    location: Mapped[str] = mapped_column(Text)
    tile_spec: Mapped[dict[str, Any]]
    threshold: Mapped[float] = mapped_column(Float)
    test_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    confusion: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """tp/fp/tn/fn of the model on its test patients at `threshold`."""
    variants: Mapped[dict[str, str] | None] = mapped_column(JSON)
    """Precision -> location of the variants registered beside the FP32 file (`core/variants.py`);
    null or empty: FP32 only."""
    active: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """One slide to score. The database is the source of truth; the broker only carries `id`."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("status", JobStatus), name="status"),
        CheckConstraint(f"error_kind IS NULL OR {_in('error_kind', ErrorKind)}", name="error_kind"),
        CheckConstraint("tiles_done >= 0 AND attempts >= 0", name="counters"),
        Index("ix_jobs_client_id_created_at", "client_id", "created_at"),
        Index("ix_jobs_status_lease_expires_at", "status", "lease_expires_at"),
        Index("uq_jobs_client_id_idempotency_key", "client_id", "idempotency_key", unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    slide_uri: Mapped[str] = mapped_column(Text)
    slide_sha256: Mapped[str | None] = mapped_column(String(64))
    slide_format: Mapped[str | None] = mapped_column(String(32))
    mpp: Mapped[float | None] = mapped_column(Float)
    """Pixel size given with the job; overrides (or supplies) the slide's own."""
    labels_uri: Mapped[str | None] = mapped_column(Text)
    tiles_done: Mapped[int] = mapped_column(default=0)
    tiles_total: Mapped[int | None]
    attempts: Mapped[int] = mapped_column(default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    """Fingerprint of the submission (slide, labels, mpp, model): a reused Idempotency-Key must
    come with the same request. NULL on jobs submitted before revision 0002."""
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    published_at: Mapped[datetime | None]
    """When the id was last sent to the broker; null: never, or the publish failed. The
    reconciler re-publishes a queued job only once this is older than the visibility window."""
    callback_url: Mapped[str | None] = mapped_column(Text)
    """Where the signed completion webhook goes (within the client's allow-list); null: none."""


class WebhookDelivery(Base):
    """The outbox: one completion webhook of a job, written in the transaction that ends the job
    (`core/jobstate.py`) and sent by the deliverer (`worker/webhooks.py`). A row, not a message
    in memory, so a delivery survives any process that dies."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(_in("status", DeliveryStatus), name="status"),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    """A job ends once, so it has at most one delivery."""
    url: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(String(32))
    """`job.succeeded`, `job.failed` or `job.cancelled`."""
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    """When the deliverer may next try; also its claim on a try in flight. Null once over."""
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]


class TileScore(Base):
    """One tile's IDC probability. Keyed by grid position: a rerun replaces, never duplicates."""

    __tablename__ = "tile_scores"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    row: Mapped[int] = mapped_column(Integer, primary_key=True)
    col: Mapped[int] = mapped_column(Integer, primary_key=True)
    x: Mapped[int] = mapped_column(Integer)
    """Left edge of the tile in level-0 pixels of the slide."""
    y: Mapped[int] = mapped_column(Integer)
    probability: Mapped[float] = mapped_column(Float)
    label: Mapped[int | None] = mapped_column(SmallInteger)
    """Ground truth where the job came with labels (1 = IDC)."""


class SlideResult(Base):
    """The summary of one scored slide and where its pictures and exports are stored."""

    __tablename__ = "slide_results"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    level: Mapped[int]
    """Pyramid level read (0 = full resolution)."""
    level_mpp: Mapped[float] = mapped_column(Float)
    """Pixel size of that level, before resampling to the model's scale."""
    effective_mpp: Mapped[float] = mapped_column(Float)
    tissue_tiles: Mapped[int]
    idc_tiles: Mapped[int]
    idc_area_mm2: Mapped[float] = mapped_column(Float)
    idc_fraction: Mapped[float] = mapped_column(Float)
    max_probability: Mapped[float | None] = mapped_column(Float)
    mean_probability: Mapped[float | None] = mapped_column(Float)
    slide_call: Mapped[str] = mapped_column(String(32))
    call_rule: Mapped[str] = mapped_column(Text)
    threshold: Mapped[float] = mapped_column(Float)
    in_distribution: Mapped[bool | None]
    """False when the slide's stain lies outside the training data's (`core/stain.py`); null for
    results stored before the check existed."""
    ood_reason: Mapped[str | None] = mapped_column(Text)
    haematoxylin_od: Mapped[float | None] = mapped_column(Float)
    haematoxylin_od_sd: Mapped[float | None] = mapped_column(Float)
    eosin_od: Mapped[float | None] = mapped_column(Float)
    eosin_od_sd: Mapped[float | None] = mapped_column(Float)
    far_tile_fraction: Mapped[float | None] = mapped_column(Float)
    stain_distance: Mapped[float | None] = mapped_column(Float)
    model_variant: Mapped[str | None] = mapped_column(String(8))
    """The model's precision that scored the slide: fp32, int8 or fp16; null before 0006 (fp32)."""
    heatmap_uri: Mapped[str | None] = mapped_column(Text)
    geojson_uri: Mapped[str | None] = mapped_column(Text)
    tiles_csv_uri: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConfusionStat(Base):
    """The confusion matrix of one labelled job at its model's threshold; aggregated per model."""

    __tablename__ = "confusion_stats"
    __table_args__ = (
        Index("ix_confusion_stats_model_id_created_at", "model_id", "created_at"),
        CheckConstraint("tp >= 0 AND fp >= 0 AND tn >= 0 AND fn >= 0", name="counts"),
    )

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    threshold: Mapped[float] = mapped_column(Float)
    tp: Mapped[int]
    fp: Mapped[int]
    tn: Mapped[int]
    fn: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """Every state-changing call: who, what, on which object. Never slide names or labels."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_client_id_at", "client_id", "at"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    client_id: Mapped[int | None] = mapped_column(ForeignKey("clients.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite gets foreign keys on, WAL and a busy timeout for concurrent processes."""
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": 30})
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits at the end of the block, or rolls back on any error."""
    with factory() as session, session.begin():
        yield session
