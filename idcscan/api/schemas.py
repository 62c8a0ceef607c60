"""Request and response schemas (pydantic) and the OpenAPI document built from them (spectree).

Why spectree: it decorates plain Flask views in plain blueprints (the app factory and its
`init_app` extensions stay as Flask documents them, no replacement app class), validates query,
JSON and headers with pydantic v2, which idcscan already uses for its settings, and builds an
OpenAPI 3.1 document from the same models, so the spec cannot drift from what is validated.
It is maintained (3.0 in 2026) and small. Validation errors are turned into problem+json by
the `before` hook below instead of spectree's own error body.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)
from spectree import SecurityScheme, SecuritySchemeData, SpecTree

from idcscan import __version__
from idcscan.api.problems import Problem
from idcscan.core.db import DeliveryStatus, JobStatus
from idcscan.core.summary import SlideCall, SlideSummary, field_names
from idcscan.core.webhooks import MAX_URL_LENGTH

log = logging.getLogger(__name__)

# A job's status names are the database's own enum, so a new state is added in one place.
JobStatusName = JobStatus

# Every key the API takes is a PostgreSQL `integer` (int4): a larger number names no row, and
# handed to the database it fails there (int4/int8 range on PostgreSQL, OverflowError on SQLite).
MAX_ID = 2**31 - 1
ID_RULE = f"int(min=1, max={MAX_ID})"
"""The URL converter of every `{id}` route: an id outside the range matches no route (404)."""
DbId = Annotated[int, Field(ge=1, le=MAX_ID)]

# Text that is stored or reaches a file system: no control characters (PostgreSQL refuses NUL in
# text, a file system refuses it in a path, and a newline in a name forges log and CLI lines).
Printable = Annotated[str, Field(pattern=r"^[^\x00-\x1f\x7f]*$")]

NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4096


def _fits_a_path(value: str | None) -> str | None:
    """A URI whose path no file system can hold names no file: refuse it as invalid input
    instead of letting the operating system's error (with the path in it) surface later."""
    if value is None:
        return None
    encoded = value.encode()
    if len(encoded) >= PATH_MAX_BYTES or any(
        len(part) > NAME_MAX_BYTES for part in encoded.split(b"/")
    ):
        raise ValueError("longer than a file system path may be")
    return value


PathLike = Annotated[Printable, AfterValidator(_fits_a_path)]

RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339(value: object) -> object:
    """What the document promises (`format: date-time`): pydantic alone would also take a number
    as a Unix timestamp, a bare date, or a time without its offset."""
    if isinstance(value, str) and not RFC3339.fullmatch(value):
        raise ValueError("not an RFC 3339 date-time with its offset")
    return value


DateTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


def invalid_request(error: ValidationError) -> Problem:
    """422 for a request that does not match its schema: where (`loc`) and which rule (`type`,
    pydantic's stable name of the check) failed. pydantic's message is left out: it is library
    text, and for a JSON body that does not parse it quotes the parser."""
    errors = [
        {"loc": list(e.get("loc", ())), "type": e.get("type", "")}
        for e in error.errors(include_url=False, include_context=False, include_input=False)
    ]
    return Problem(422, "invalid-request", "The request does not match the schema.", errors=errors)


def _reject_invalid(req: Any, resp: Any, req_validation_error: Any, instance: Any, *_: Any) -> None:
    if req_validation_error is not None:
        raise invalid_request(req_validation_error)


def _refuse_invalid_response(
    req: Any, resp: Any, resp_validation_error: Any, instance: Any, *_: Any
) -> None:
    # spectree would answer a 500 carrying pydantic's error list (values included).
    if resp_validation_error is not None:
        where = [e.get("loc") for e in resp_validation_error.errors(include_input=False)]
        log.error("a response does not match its schema", extra={"locations": str(where)})
        raise Problem(500, "internal", "Internal error; it has been logged.")


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every timestamp idcscan writes is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class ProblemOut(BaseModel):
    """RFC 9457 problem details; `type` is stable per cause."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str


spec = SpecTree(
    "flask",
    title="idcscan",
    version=__version__,
    description="Invasive ductal carcinoma detection in H&E breast slides, as a batch service.",
    path="docs",
    page_templates={},  # the page is ours (/docs), over the completed /openapi.json
    mode="strict",
    annotations=True,
    before=_reject_invalid,
    after=_refuse_invalid_response,
    validation_error_model=ProblemOut,
    security_schemes=[
        SecurityScheme(name="bearer", data=SecuritySchemeData(type="http", scheme="bearer")),  # type: ignore[arg-type]
    ],
    security={"bearer": []},
)


class Progress(BaseModel):
    tiles_done: int
    tiles_total: int | None
    fraction: float | None


class JobError(BaseModel):
    kind: str
    message: str | None


class WebhookOut(BaseModel):
    """The job's completion webhook: `waiting` until the job ends, then `pending` (being tried),
    `delivered` or `failed` (given up after the last attempt)."""

    url: str
    status: Literal["waiting"] | DeliveryStatus
    attempts: int
    last_status_code: int | None = Field(description="The receiver's answer to the last try.")
    last_error: str | None = Field(description="Why the last try did not deliver, if it did not.")
    next_attempt_at: datetime | None
    delivered_at: datetime | None


class JobOut(BaseModel):
    id: uuid.UUID
    status: JobStatusName
    model_id: int
    progress: Progress
    slide_format: str | None
    slide_sha256: str | None
    mpp: float | None
    labelled: bool
    attempts: int
    error: JobError | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    webhook: WebhookOut | None = Field(
        description="The completion webhook, when the job named a callback_url; else null."
    )


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class JobQuery(BaseModel):
    status: JobStatusName | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = None


class JobByUri(BaseModel):
    """Submit a slide already on storage (JSON body). Uploads use multipart: see `SlideUpload`."""

    model_config = ConfigDict(extra="forbid")
    slide_uri: PathLike = Field(min_length=1, max_length=PATH_MAX_BYTES)
    labels_uri: PathLike | None = Field(default=None, max_length=PATH_MAX_BYTES)
    mpp: float | None = Field(default=None, gt=0, le=1000)
    model_id: DbId | None = None
    callback_url: Printable | None = Field(
        default=None,
        max_length=MAX_URL_LENGTH,
        description="Where to POST the signed job summary when the job ends (succeeded, failed "
        "or cancelled); must start with a prefix of the client's webhook allow-list.",
    )


class SlideUpload(BaseModel):
    """multipart/form-data fields of an upload (documented here; parsed as a stream)."""

    slide: bytes = Field(description="The slide file (SVS, pyramidal TIFF, ...).")
    labels: bytes | None = Field(
        default=None, description="Ground truth: GeoJSON annotations or a tile-label CSV."
    )
    mpp: float | None = Field(default=None, gt=0, le=1000)
    model_id: DbId | None = None
    callback_url: Printable | None = Field(
        default=None,
        max_length=MAX_URL_LENGTH,
        description="Where to POST the signed job summary when the job ends (succeeded, failed "
        "or cancelled); must start with a prefix of the client's webhook allow-list.",
    )


class IdempotencyHeader(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")
    idempotency_key: Printable | None = Field(default=None, alias="Idempotency-Key", max_length=200)


def summary_fields() -> dict[str, Any]:
    """`SlideSummary`'s fields as pydantic fields, in its order and with its types, so that the
    result schema follows the one dataclass instead of restating it."""
    hints = get_type_hints(SlideSummary)
    return {name: (hints[name], ...) for name in field_names()}


class _ResultOf(BaseModel):
    job_id: uuid.UUID
    model_id: int
    model_version: str
    model_variant: Literal["fp32", "int8", "fp16"] = Field(
        description="The model's precision that scored the slide: `int8` on a CPU worker and "
        "`fp16` on a GPU worker when the model has that variant, `fp32` otherwise."
    )


SlideResultOut = create_model(
    "SlideResultOut",
    __base__=_ResultOf,
    **summary_fields(),
    confusion=(
        dict[str, float | int] | None,
        Field(
            description="tp/fp/tn/fn and derived figures, missed IDC first; null without labels."
        ),
    ),
    created_at=(datetime, ...),
)
"""A job's result: which model, the slide summary (`idcscan.core.summary.SlideSummary`), its
confusion matrix when it came with labels."""


class TileOut(BaseModel):
    row: int
    col: int
    x: int
    y: int
    probability: float
    label: int | None


class TilesOut(BaseModel):
    """The JSON form of `/tiles` (streamed); the CSV form has the same columns."""

    job_id: uuid.UUID
    tiles: list[TileOut]


class TilesQuery(BaseModel):
    format: Literal["json", "csv"] | None = Field(
        default=None, description="Overrides the Accept header."
    )


class ModelOut(BaseModel):
    id: int
    version: str
    architecture: str
    onnx_sha256: str
    threshold: float
    tile_spec: dict[str, Any]
    test_metrics: dict[str, Any]
    confusion: dict[str, Any]
    variants: list[Literal["int8", "fp16"]] = Field(
        description="Precision variants registered beside the FP32 file: a CPU worker runs "
        "`int8`, a CUDA worker `fp16`, when present."
    )
    active: bool
    created_at: datetime


class ModelList(BaseModel):
    models: list[ModelOut]


class StatsQuery(BaseModel):
    period: Literal["day", "week", "month"] = "month"
    model_id: DbId | None = None
    since: DateTime | None = None
    until: DateTime | None = None


class ConfusionBucket(BaseModel):
    model_id: int
    period_start: datetime
    jobs: int
    confusion: dict[str, float | int]


class ConfusionStats(BaseModel):
    period: str
    buckets: list[ConfusionBucket]


class ClientIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Printable = Field(min_length=1, max_length=200)
    admin: bool = False


class ClientOut(BaseModel):
    id: int
    name: str
    role: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    webhook_allow: list[str] = Field(
        description="URL prefixes this client's jobs may name as callback_url."
    )


class ClientList(BaseModel):
    clients: list[ClientOut]


class ClientWithKey(ClientOut):
    key: str = Field(description="The new API key. Shown once; store it now.")


class WebhooksIn(BaseModel):
    """A client's webhook allow-list: the URL prefixes its jobs' `callback_url` must start with."""

    model_config = ConfigDict(extra="forbid")
    allow: list[Annotated[Printable, Field(min_length=1, max_length=MAX_URL_LENGTH)]] = Field(
        max_length=50, description="http(s) URL prefixes; empty: the client names no callback."
    )


class WebhooksOut(BaseModel):
    client_id: int
    allow: list[str]
    secret: str | None = Field(
        description="The client's new webhook signing secret (`whsec_...`), shown this once: "
        "when the allow-list is first set, or rotated. Null otherwise."
    )


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


WorklistSort = Literal["suspicion", "idc_area", "max_probability", "newest"]


class WorklistQuery(BaseModel):
    status: JobStatusName | None = None
    since: DateTime | None = Field(default=None, description="Jobs submitted at or after.")
    until: DateTime | None = Field(default=None, description="Jobs submitted before.")
    sort: WorklistSort = Field(
        default="suspicion",
        description="`suspicion`: slide call (IDC first), then IDC area, then max probability; "
        "or one of those alone; `newest`: by submission. Jobs without results follow, newest "
        "first.",
    )
    limit: int = Field(default=100, ge=1, le=500)


class WorklistSummary(BaseModel):
    slide_call: SlideCall
    idc_area_mm2: float
    max_probability: float | None
    idc_tiles: int
    tissue_tiles: int
    threshold: float
    missed_idc: int | None = Field(
        description="Labelled jobs: IDC tiles of the ground truth the model called negative."
    )
    in_distribution: bool | None = Field(
        description="False when the slide's stain lies outside the training data's (the call is "
        "then `indeterminate`); null for results stored before the check existed."
    )
    ood_reason: str | None = Field(description="Why the slide is out of distribution, in words.")


class WorklistItem(BaseModel):
    rank: int = Field(description="1 is the most suspicious (or the first in `sort`).")
    job: JobOut
    summary: WorklistSummary | None = Field(description="Null until the job has succeeded.")
    viewer_url: str | None = Field(
        description="A signed link to the job's viewer, valid until `viewer_expires_at`; "
        "null until the job has succeeded."
    )


class Worklist(BaseModel):
    sort: WorklistSort
    items: list[WorklistItem]
    viewer_expires_at: datetime


class ViewerLinkOut(BaseModel):
    url: str = Field(description="Opens the job's viewer with no key; relative to the API.")
    expires_at: datetime
