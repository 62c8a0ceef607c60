"""Jobs: submit a slide (upload or `slide_uri`), poll one job, list the client's jobs, cancel.

Submission order: stage and hash the upload (or copy the named `slide_uri` from the caller's
folder), check the model, probe the slide's header, store it under its hash, commit the job row
(with its audit event), and only then publish the id. Bad input is refused before anything is
stored; a blob is never deleted by a request (see `idcscan.api.storage`). An `Idempotency-Key`
names one request: the job stores a fingerprint of what was asked (`request_fingerprint`), a
retry that asks the same gets the first job back and one that asks something else is refused
(422). It is
race-safe through the unique index on (client_id, idempotency_key): the loser of a race catches
the IntegrityError and answers with the winner's job. A `callback_url` must be within the
caller's webhook allow-list (`core/webhooks.py`), checked before anything is stored; a job shows
its webhook's delivery (`webhook`) once it ended.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, g, request, url_for
from spectree import Response as Resp
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from idcscan.api import logs
from idcscan.api.audit import audit
from idcscan.api.auth import caller
from idcscan.api.probe import probe_slide
from idcscan.api.problems import Problem, accepts, job_error_text, not_found
from idcscan.api.schemas import (
    MAX_ID,
    IdempotencyHeader,
    JobByUri,
    JobError,
    JobOut,
    JobPage,
    JobQuery,
    ProblemOut,
    Progress,
    WebhookOut,
    aware,
    spec,
)
from idcscan.api.storage import BlobStore
from idcscan.api.upload import (
    MAX_LABELS_BYTES,
    Upload,
    receive_multipart,
    resolve_slide_uri,
    stage_shared_file,
)
from idcscan.broker import publish_job
from idcscan.core import jobstate, webhooks
from idcscan.core.db import Client, Job, Model, WebhookDelivery, transaction, utcnow
from idcscan.core.errors import InvalidInput
from idcscan.core.labels import parse_labels
from idcscan.core.settings import Settings

bp = Blueprint("jobs", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)

PROBLEMS = {f"HTTP_{code}": ProblemOut for code in (401, 404, 429)}


def job_out(job: Job, delivery: WebhookDelivery | None = None) -> JobOut:
    """A job as clients read it; `delivery` is its outbox row, once it ended (`with_webhook`)."""
    total = job.tiles_total
    return JobOut(
        id=job.id,
        status=job.status,
        model_id=job.model_id,
        progress=Progress(
            tiles_done=job.tiles_done,
            tiles_total=total,
            fraction=round(job.tiles_done / total, 4) if total else None,
        ),
        slide_format=job.slide_format,
        slide_sha256=job.slide_sha256,
        mpp=job.mpp,
        labelled=job.labels_uri is not None,
        attempts=job.attempts,
        error=JobError(
            kind=job.error_kind, message=job_error_text(job.error_kind, job.error_message)
        )
        if job.error_kind
        else None,
        created_at=aware(job.created_at),
        updated_at=aware(job.updated_at),
        started_at=aware(job.started_at),
        finished_at=aware(job.finished_at),
        webhook=_webhook_out(job, delivery),
    )


def _webhook_out(job: Job, delivery: WebhookDelivery | None) -> WebhookOut | None:
    if job.callback_url is None:
        return None
    if delivery is None:  # the job has not ended yet
        return WebhookOut(
            url=job.callback_url,
            status="waiting",
            attempts=0,
            last_status_code=None,
            last_error=None,
            next_attempt_at=None,
            delivered_at=None,
        )
    return WebhookOut(
        url=delivery.url,
        status=delivery.status,
        attempts=delivery.attempts,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        next_attempt_at=aware(delivery.next_attempt_at),
        delivered_at=aware(delivery.delivered_at),
    )


def with_webhook(session: Session, job: Job) -> JobOut:
    """`job_out` with the job's webhook delivery read from `session`."""
    return job_out(job, session.get(WebhookDelivery, job.id))


def own_job(session: Session, job_id: uuid.UUID) -> Job:
    """The caller's job, or 404: another client's job does not exist for this caller."""
    job = session.scalar(select(Job).where(Job.id == job_id, Job.client_id == caller().id))
    if job is None:
        raise not_found()
    g.job_id = str(job.id)
    return job


@dataclass
class Prepared:
    """A slide accepted for scoring, stored with its labels under their content hashes.

    A request that fails after storing leaves its blobs in place: the same bytes may be another
    job's, so only `idcscan storage gc` removes blobs, once no job names them.
    """

    slide_uri: str
    slide_sha256: str
    slide_format: str
    mpp: float | None
    labels_uri: str | None


@bp.post("/jobs")
@accepts(
    "multipart/form-data",
    "application/json",
    detail="Send multipart/form-data (an upload) or JSON (a slide_uri).",
)
@spec.validate(
    json=JobByUri,
    headers=IdempotencyHeader,
    resp=Resp(
        HTTP_202=JobOut,
        HTTP_400=ProblemOut,
        HTTP_409=ProblemOut,
        HTTP_413=ProblemOut,
        HTTP_415=ProblemOut,
        HTTP_422=ProblemOut,
        **PROBLEMS,
    ),
    tags=["jobs"],
)
def submit() -> Any:
    """Submit a slide: a multipart upload (`slide`, optional `labels`, `mpp`, `model_id`) or JSON
    naming a `slide_uri` on configured storage. 202 with the job and its `Location`."""
    settings: Settings = current_app.extensions["idcscan.settings"]
    store: BlobStore = current_app.extensions["idcscan.store"]
    db = current_app.extensions["idcscan.db"]
    key = request.headers.get("Idempotency-Key") or None

    if request.mimetype == "multipart/form-data":
        _check_length(settings)
        # Before the body is first touched: the app-wide limit is for small JSON bodies.
        request.max_content_length = _upload_allowance(settings)
        upload = receive_multipart(
            request.stream,
            request.content_type or "",
            store.staging_dir(),
            settings.max_upload_bytes,
        )
        try:
            requested = _id_field(upload.fields.get("model_id"), "model_id")
            mpp = _mpp_field(upload.fields.get("mpp"))
            callback_url = _allowed_callback(upload.fields.get("callback_url") or None)
            labels = upload.files.get("labels")
            fingerprint = request_fingerprint(
                slide_sha256=upload.files["slide"].sha256,
                labels_sha256=labels.sha256 if labels else None,
                mpp=mpp,
                model_id=requested,
                **_callback_asked(callback_url),
            )
            if (replayed := _replay(db, key, fingerprint)) is not None:
                return replayed
            model_id = _chosen_model(requested)
            prepared = _prepare(upload, mpp, settings, store)
        finally:
            upload.discard()
    else:  # JSON, checked by `accepts` and validated by spectree
        body: JobByUri = request.context.json  # type: ignore[attr-defined]
        callback_url = _allowed_callback(body.callback_url)
        fingerprint = request_fingerprint(
            slide_uri=body.slide_uri,
            labels_uri=body.labels_uri,
            mpp=body.mpp,
            model_id=body.model_id,
            **_callback_asked(callback_url),
        )
        if (replayed := _replay(db, key, fingerprint)) is not None:
            return replayed
        model_id = _chosen_model(body.model_id)
        prepared = _prepare_uri(body, settings, store)

    job = Job(
        id=uuid.uuid4(),
        client_id=caller().id,
        slide_uri=prepared.slide_uri,
        slide_sha256=prepared.slide_sha256,
        slide_format=prepared.slide_format,
        mpp=prepared.mpp,
        labels_uri=prepared.labels_uri,
        idempotency_key=key,
        model_id=model_id,
        request_sha256=fingerprint,
        callback_url=callback_url,
        # Published right after the commit below; if that fails the mark is taken back, and the
        # reconciler publishes the job at its next round (`jobstate.due_for_publish`).
        published_at=utcnow(),
    )
    try:
        with transaction(db) as session:
            session.add(job)
            session.flush()
            audit(
                session,
                caller().id,
                "job.submit",
                "job",
                job.id,
                labelled=job.labels_uri is not None,
            )
    except IntegrityError:
        # A concurrent request under the same key committed first: its job, if it asked the same.
        if (replayed := _replay(db, key, fingerprint)) is not None:
            return replayed
        raise
    g.job_id = str(job.id)
    log.info("job accepted", extra=logs.context())
    try:
        publish_job(job.id, settings)
    except Exception:
        log.warning(
            "publish failed; the reconciler will re-publish", exc_info=True, extra=logs.context()
        )
        try:
            with transaction(db) as session:
                jobstate.unpublished(session, [job.id])
        except Exception:  # the database went too: the visibility window's round publishes it
            log.warning("could not record the failed publish", extra=logs.context())
    return _accepted(job, replayed=False)


def _accepted(
    job: Job, replayed: bool, delivery: WebhookDelivery | None = None
) -> tuple[JobOut, int, dict[str, str]]:
    g.job_id = str(job.id)
    headers = {"Location": url_for("jobs.get_job", job_id=job.id)}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return job_out(job, delivery), 202, headers


def request_fingerprint(**asked: object) -> str:
    """SHA-256 of what a submission asks for: the slide and labels (by content for an upload, by
    URI as given otherwise), the pixel size and the model. Two requests that ask the same agree."""
    canonical = json.dumps(asked, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _allowed_callback(url: str | None) -> str | None:
    """The job's callback URL if the caller's webhook allow-list (set by an admin) allows it;
    422 otherwise, before anything is stored."""
    if url is None:
        return None
    with current_app.extensions["idcscan.db"]() as session:
        client = session.get(Client, caller().id)
        prefixes = client.webhook_prefixes if client is not None else None
        secret = client.webhook_secret if client is not None else None
    try:
        if secret is None:
            raise webhooks.CallbackRefused("no webhook allow-list is set for this client")
        return webhooks.check_callback(url, prefixes)
    except webhooks.CallbackRefused as refused:
        # The reason is one of a few fixed texts; nothing of the URL is echoed back.
        raise Problem(422, "callback-not-allowed", f"Refused: {refused}.") from None


def _callback_asked(callback_url: str | None) -> dict[str, str]:
    """The callback as part of the request's fingerprint; left out when none was named, so that
    a request without one has the fingerprint it had before callbacks existed."""
    return {"callback_url": callback_url} if callback_url else {}


def _replay(
    db: Any, key: str | None, fingerprint: str
) -> tuple[JobOut, int, dict[str, str]] | None:
    """The job an earlier request under `key` created, if any; a different request under the
    same key is refused (422). A job from before fingerprints were stored is replayed as before."""
    if key is None:
        return None
    with db() as session:
        existing = _by_key(session, key)
        delivery = session.get(WebhookDelivery, existing.id) if existing is not None else None
    if existing is None:
        return None
    if existing.request_sha256 not in (None, fingerprint):
        raise Problem(
            422,
            "idempotency-key-reused",
            "This Idempotency-Key was sent before with a different request; use a new key.",
        )
    return _accepted(existing, replayed=True, delivery=delivery)


def _by_key(session: Session, key: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.client_id == caller().id, Job.idempotency_key == key)
    )


def _upload_allowance(settings: Settings) -> int:
    """The largest multipart body: the slide and the labels at their limits, plus framing."""
    return settings.max_upload_bytes + MAX_LABELS_BYTES + 65536


def _check_length(settings: Settings) -> None:
    # Refuse an announced oversize body before reading it; the exact per-file checks happen while
    # streaming, and a chunked body (no length announced) is cut off at the same allowance.
    length = request.content_length
    if length is not None and length > _upload_allowance(settings):
        raise InvalidInput("The upload is larger than allowed.", "upload-too-large")


def _id_field(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise Problem(422, "invalid-request", f"`{name}` must be an integer.") from None
    if not 1 <= number <= MAX_ID:
        raise Problem(422, "invalid-request", f"`{name}` names no row: it is out of range.")
    return number


def _mpp_field(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        mpp = float(value)
    except ValueError:
        raise Problem(422, "invalid-request", "`mpp` must be a number.") from None
    if not 0 < mpp <= 1000:
        raise Problem(422, "invalid-request", "`mpp` must be a positive pixel size in um/px.")
    return mpp


def _chosen_model(model_id: int | None) -> int:
    """The model the job will use, checked before anything is stored."""
    with current_app.extensions["idcscan.db"]() as session:
        return _model_for(session, model_id)


def _model_for(session: Session, model_id: int | None) -> int:
    if model_id is not None:
        if session.get(Model, model_id) is None:
            raise Problem(422, "unknown-model", "No model has that model_id.")
        return model_id
    active = session.scalar(select(Model.id).where(Model.active))
    if active is None:
        raise Problem(409, "no-active-model", "No model is active; an admin must activate one.")
    return active


def _prepare(upload: Upload, mpp: float | None, settings: Settings, store: BlobStore) -> Prepared:
    """Probe the staged slide, parse the staged labels, then store both under their hashes."""
    slide = upload.files["slide"]
    header = probe_slide(slide.path, mpp, settings.max_slide_pixels)
    # Stored names end in a suffix of what the content is, never one of the client's (L4).
    keys = {"slide": f"slides/{slide.sha256[:2]}/{slide.sha256}{header.suffix}"}
    labels = upload.files.get("labels")
    if labels is not None:
        with labels.path.open("rb") as handle:  # the worker's parser: refuse now what it would
            truth = parse_labels(handle)
        keys["labels"] = f"labels/{labels.sha256[:2]}/{labels.sha256}{truth.suffix}"
    for name, key in keys.items():
        store.store(upload.files[name].path, key)
    return Prepared(
        slide_uri=store.uri(keys["slide"]),
        slide_sha256=slide.sha256,
        slide_format=header.format,
        mpp=mpp,
        labels_uri=store.uri(keys["labels"]) if "labels" in keys else None,
    )


def _prepare_uri(body: JobByUri, settings: Settings, store: BlobStore) -> Prepared:
    """Copy the named slide (and labels) from the caller's folder, then as an upload."""
    root, client_id = settings.slide_uri_root, caller().id
    slide = resolve_slide_uri(body.slide_uri, root, client_id)
    labels = (
        resolve_slide_uri(body.labels_uri, root, client_id, "labels") if body.labels_uri else None
    )
    staging = store.staging_dir()
    upload = Upload()
    try:
        upload.files["slide"] = stage_shared_file(
            slide, staging, settings.max_upload_bytes, "slide"
        )
        if labels is not None:
            upload.files["labels"] = stage_shared_file(labels, staging, MAX_LABELS_BYTES, "labels")
        return _prepare(upload, body.mpp, settings, store)
    finally:
        upload.discard()


@bp.get("/jobs/<uuid:job_id>")
@spec.validate(resp=Resp(HTTP_200=JobOut, **PROBLEMS), tags=["jobs"])
def get_job(job_id: uuid.UUID) -> Any:
    """A job's status, progress (tiles done / total), timestamps and error."""
    with current_app.extensions["idcscan.db"]() as session:
        return with_webhook(session, own_job(session, job_id))


@bp.get("/jobs")
@spec.validate(query=JobQuery, resp=Resp(HTTP_200=JobPage, **PROBLEMS), tags=["jobs"])
def list_jobs() -> Any:
    """The caller's jobs, newest first, optionally filtered by status; cursor-paginated."""
    query: JobQuery = request.context.query  # type: ignore[attr-defined]
    statement = select(Job).where(Job.client_id == caller().id)
    if query.status:
        statement = statement.where(Job.status == query.status)
    if query.cursor:
        created_at, job_id = _decode_cursor(query.cursor)
        statement = statement.where(
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        )
    statement = statement.order_by(Job.created_at.desc(), Job.id.desc()).limit(query.limit + 1)
    with current_app.extensions["idcscan.db"]() as session:
        jobs = list(session.scalars(statement))
        more = len(jobs) > query.limit
        jobs = jobs[: query.limit]
        deliveries = webhooks.deliveries_of(session, [job.id for job in jobs])
    cursor = _encode_cursor(jobs[-1]) if more else None
    return JobPage(jobs=[job_out(job, deliveries.get(job.id)) for job in jobs], next_cursor=cursor)


def _encode_cursor(job: Job) -> str:
    raw = f"{aware(job.created_at).isoformat()}|{job.id}"  # type: ignore[union-attr]
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, _, job_id = raw.partition("|")
        return datetime.fromisoformat(created_at), uuid.UUID(job_id)
    except ValueError:
        raise Problem(422, "invalid-cursor", "The cursor is not one this service issued.") from None


@bp.post("/jobs/<uuid:job_id>/cancel")
@spec.validate(resp=Resp(HTTP_200=JobOut, HTTP_409=ProblemOut, **PROBLEMS), tags=["jobs"])
def cancel_job(job_id: uuid.UUID) -> Any:
    """Cancel a queued or running job; the worker stops at its next check of the job's status
    and nothing of the job's results is kept."""
    store: BlobStore = current_app.extensions["idcscan.store"]
    with transaction(current_app.extensions["idcscan.db"]) as session:
        job = own_job(session, job_id)
        # Conditional, so that a worker finishing at this instant is never overwritten; the
        # answer is the state after the update, read again, never the one read before it.
        if not jobstate.cancel(session, job.id, now=utcnow()):
            status_now = jobstate.status_of(session, job.id)
            raise Problem(
                409, "job-finished", f"The job is already {status_now}.", status_now=status_now
            )
        audit(session, caller().id, "job.cancel", "job", job.id)
    # Files a worker wrote before the cancel (one still running removes its own as it stops).
    store.storage.delete(jobstate.results_prefix(job_id))
    with current_app.extensions["idcscan.db"]() as session:
        job = own_job(session, job_id)
        log.info("job cancelled", extra=logs.context())
        return with_webhook(session, job)
