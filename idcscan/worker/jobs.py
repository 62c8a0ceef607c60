"""A job's run on a worker: claim with a lease, score, store the outputs, end it once.

Every state change is a conditional UPDATE of `idcscan.core.jobstate` (status, lease owner,
lease expiry), so two deliveries of one job cannot both run it, a worker whose lease was taken
over cannot write, and a cancelled job stops at the next batch. Its rows (`worker.results`) are
written in one transaction together with the `succeeded` status: a job is either done with all
its rows or has none. The models come from `worker.modelcache`; storage, the model cache and
`on_hang` are passed in, the seams tests use.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from idcscan.core import jobstate
from idcscan.core.db import (
    ErrorKind,
    Job,
    JobStatus,
    Model,
    transaction,
    utcnow,
)
from idcscan.core.errors import InvalidInput
from idcscan.core.labels import GroundTruth, parse_labels
from idcscan.core.outage import unavailable
from idcscan.core.settings import Settings
from idcscan.core.slides import open_slide
from idcscan.core.storage import Storage, open_uri
from idcscan.worker import outputs, results
from idcscan.worker.evaluation import evaluate, ground_truth
from idcscan.worker.modelcache import ModelCache
from idcscan.worker.pipeline import Cancelled, SlideScore, score_slide

log = logging.getLogger(__name__)

# Progress is written at most this often (and the lease renewed with it when due).
PROGRESS_INTERVAL_S = 0.25
# A slide's deadline beyond `slide_deadline_min_s`: time to read its bytes from a slow share and
# to score its tiles on a slow CPU (the reference model scores thousands of tiles a second; this
# allows 20), so that only a reader that is stuck, not one that is slow, meets it.
READ_BYTES_PER_S = 5_000_000
SECONDS_PER_TILE = 0.05
# After a deadline, how long the scoring thread has to notice before its process is ended.
HANG_GRACE_S = 5.0
# First and longest pause between tries of a job's ending while the database is unreachable.
OUTAGE_RETRY_FIRST_S = 0.2
OUTAGE_RETRY_MAX_S = 5.0

T = TypeVar("T")


results_prefix = jobstate.results_prefix


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Claim:
    job_id: uuid.UUID
    owner: str
    slide_uri: str
    mpp: float | None
    labels_uri: str | None
    client_id: int
    model_id: int
    model_location: str
    model_variants: dict[str, str] | None = None


class Heartbeat:
    """Writes progress (throttled) and renews the lease from a thread; notices cancellation; and
    watches the slide's deadline, calling `on_deadline(self)` once it has passed.

    The watch lives in this thread, not in the one that reads the slide, because a reader stuck
    in a system call or in OpenSlide's C code never comes back to check a clock.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        claim: Claim,
        lease_s: int,
        on_deadline: Callable[[Heartbeat], None] | None = None,
    ) -> None:
        self.sessions, self.claim, self.lease_s = sessions, claim, lease_s
        self.done = 0
        self.total: int | None = None
        self.lost = threading.Event()
        self.timed_out = threading.Event()
        self.deadline_s: float | None = None
        self._on_deadline = on_deadline
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._written: tuple[int, int | None] = (0, None)
        self._renewed = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="idcscan-heartbeat", daemon=True)

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def stopped(self) -> bool:
        return self.lost.is_set()

    def set_deadline(self, seconds: float) -> None:
        """The slide must be done `seconds` after the claim."""
        self.deadline_s = seconds

    def scoring_returned(self, timeout: float) -> bool:
        """Wait up to `timeout` for the scoring thread to leave this heartbeat's block."""
        return self._stop.wait(timeout)

    def _check_deadline(self) -> None:
        if self.deadline_s is None or self.timed_out.is_set():
            return
        if time.monotonic() - self._started > self.deadline_s:
            self.timed_out.set()
            self.lost.set()  # a scoring loop that still runs stops at its next batch
            if self._on_deadline is not None:
                self._on_deadline(self)

    def _write(self) -> None:
        with transaction(self.sessions) as session:
            held = jobstate.renew(
                session,
                self.claim.job_id,
                self.claim.owner,
                lease_s=self.lease_s,
                now=utcnow(),
                tiles_done=self.done,
                tiles_total=self.total,
            )
        if not held:
            self.lost.set()
        self._written = (self.done, self.total)
        self._renewed = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            try:
                self._check_deadline()
            except Exception:
                log.exception("job %s: ending a job past its deadline failed", self.claim.job_id)
            due = time.monotonic() - self._renewed > self.lease_s / 3
            if due or (self.done, self.total) != self._written:
                try:
                    self._write()
                except Exception:  # a database hiccup must not kill the job; the lease is long
                    log.warning("job %s: progress write failed", self.claim.job_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        models: ModelCache,
        timeout_errors: tuple[type[BaseException], ...] = (),
        storage: Storage | None = None,
        on_hang: Callable[[], None] | None = None,
    ) -> None:
        """`on_hang` is called when a slide's reader is still stuck `HANG_GRACE_S` after the job
        was ended as `timeout`: a Celery pool process ends itself there (the pool starts a new
        one), so that the slot is free again; by default the stuck thread is only logged."""
        self.settings, self.sessions, self.models = settings, sessions, models
        self.storage = storage or Storage(settings.storage)
        self.on_hang = on_hang
        self.timeout_errors = timeout_errors

    # -- claim ------------------------------------------------------------------------------

    def claim(self, job_id: uuid.UUID) -> Claim | None:
        """Take the job if it is queued (or its lease expired) and attempts remain; None to skip."""
        owner = worker_identity()
        now = utcnow()
        with transaction(self.sessions) as session:
            if not jobstate.claim(
                session,
                job_id,
                owner,
                lease_s=self.settings.lease_s,
                max_attempts=self.settings.max_attempts,
                now=now,
            ):
                return None
            job = session.get(Job, job_id)
            assert job is not None
            if job.started_at is None:
                job.started_at = now
            model = session.get(Model, job.model_id)
            if model is None:
                raise RuntimeError(f"job {job_id} names model {job.model_id}, which does not exist")
            return Claim(
                job_id=job_id,
                owner=owner,
                slide_uri=job.slide_uri,
                mpp=job.mpp,
                labels_uri=job.labels_uri,
                client_id=job.client_id,
                model_id=model.id,
                model_location=model.location,
                model_variants=model.variants,
            )

    # -- run --------------------------------------------------------------------------------

    def run(self, job_id: uuid.UUID) -> str:
        """Run one delivery of a job; returns what happened (for logs and tests)."""
        claim = self.claim(job_id)
        if claim is None:
            log.info(
                "job %s: not claimable (finished, running elsewhere or out of attempts)", job_id
            )
            return "skipped"
        log.info("job %s: claimed by %s", job_id, claim.owner)
        heartbeat = Heartbeat(self.sessions, claim, self.settings.lease_s, self._past_deadline)
        cpu = time.process_time()
        try:
            with heartbeat:
                score = self._score(claim, heartbeat)
                started = time.perf_counter()
                files = outputs.render(score)
                uris = {
                    name: self.storage.put_bytes(f"{results_prefix(job_id)}/{name}", data)
                    for name, data in files.items()
                }
                score.seconds["outputs"] = time.perf_counter() - started
                # CPU seconds of every thread of this process: they barely move when other work
                # shares the machine, unlike the wall seconds above.
                score.seconds["cpu"] = time.process_time() - cpu
                if heartbeat.stopped():
                    raise Cancelled()
            return self._through_outage(claim, lambda: self._succeed(claim, score, uris))
        except Cancelled:
            self._discard(claim)
            if heartbeat.timed_out.is_set():
                return "failed"  # ended as `timeout` by the heartbeat's watch
            log.info("job %s: stopped (cancelled or lease taken over)", job_id)
            return "cancelled"
        except InvalidInput as exc:
            self._fail(claim, ErrorKind.INVALID_INPUT, f"{exc.code}: {exc}")
            log.info("job %s: invalid input (%s)", job_id, exc.code)
            return "failed"
        except self.timeout_errors:
            self._fail(
                claim,
                ErrorKind.TIMEOUT,
                f"scoring took longer than {self.settings.soft_time_limit_s} s",
            )
            return "failed"
        except Exception as exc:
            if unavailable(exc) is not None:
                return self._release(claim)
            log.exception("job %s: internal error", job_id)
            self._fail(claim, ErrorKind.INTERNAL, f"internal error: {exc.__class__.__name__}")
            return "failed"

    def deadline_s(self, slide_bytes: int, tiles: int) -> float:
        """How long one slide may take: the least any slide gets, plus time for its size, within
        the task's soft limit (which stays the outer bound)."""
        budget = (
            self.settings.slide_deadline_min_s
            + slide_bytes / READ_BYTES_PER_S
            + tiles * SECONDS_PER_TILE
        )
        return min(budget, float(self.settings.soft_time_limit_s))

    def _past_deadline(self, heartbeat: Heartbeat) -> None:
        """In the heartbeat's thread: end the job as `timeout` now, whatever the reader does; if
        the reader does not come back, end the process that holds it (`on_hang`)."""
        claim = heartbeat.claim
        seconds = heartbeat.deadline_s or 0.0
        log.warning("job %s: past its deadline of %.0f s", claim.job_id, seconds)
        self._fail(claim, ErrorKind.TIMEOUT, f"the slide took longer than its {seconds:.0f} s")
        if heartbeat.scoring_returned(HANG_GRACE_S):
            return
        log.error("job %s: the slide's reader is stuck past its deadline", claim.job_id)
        if self.on_hang is not None:
            self.on_hang()

    def _through_outage(self, claim: Claim, ending: Callable[[], T]) -> T:
        """`ending()`, tried again while the database is unreachable, for as long as a lease.

        An ending is one transaction conditional on this worker's lease, so trying it again is
        safe: it commits once, or finds the job taken over (after the lease ran out) and does
        nothing. A brief outage (a restart, a failover, a dropped connection) costs the job a
        few seconds instead of an attempt or a `failed` it did not deserve.
        """
        deadline = time.monotonic() + self.settings.lease_s
        pause = OUTAGE_RETRY_FIRST_S
        while True:
            try:
                return ending()
            except Exception as exc:
                what = unavailable(exc)
                if what is None or time.monotonic() + pause > deadline:
                    raise
                log.warning(
                    "job %s: %s unavailable while finishing; trying again in %.1f s",
                    claim.job_id,
                    what,
                    pause,
                )
            time.sleep(pause)
            pause = min(pause * 2, OUTAGE_RETRY_MAX_S)

    def _release(self, claim: Claim) -> str:
        """Our own outage outlasted the retries: give the job back to the queue, the attempt
        refunded, its partial files removed; the reconciler publishes it again. If even that
        cannot reach the database, the lease runs out and the reconciler requeues the job."""
        self.storage.delete(results_prefix(claim.job_id))
        try:
            with transaction(self.sessions) as session:
                jobstate.release(session, claim.job_id, claim.owner, now=utcnow())
        except Exception as exc:
            if unavailable(exc) is None:
                raise
            log.warning("job %s: database unavailable; left to the lease", claim.job_id)
            return "deferred"
        log.warning("job %s: database unavailable; job given back to the queue", claim.job_id)
        return "released"

    def _stored(self, uri: str, folder: str, what: str, code: str) -> str:
        """`uri` if it names a blob the API stored; refused otherwise.

        The API copies every slide and labels file into storage before it commits a job, so a
        job naming anything else (a row written by hand or by an older release, which named files
        on the slide_uri share) is refused rather than read: what the worker opens is what the
        API probed.
        """
        key = self.storage.key_of(uri)
        if key is None or not key.startswith(f"{folder}/"):
            raise InvalidInput(f"the job's {what} is not in the service's storage", code)
        return self.storage.uri(key)

    def _score(self, claim: Claim, heartbeat: Heartbeat) -> SlideScore:
        slide_uri = self._stored(claim.slide_uri, "slides", "slide", "slide-outside-storage")
        key = self.storage.key_of(slide_uri)
        slide_bytes = self.storage.size(key) if key and self.storage.exists(key) else 0
        heartbeat.set_deadline(self.deadline_s(slide_bytes, 0))

        def progress(done: int, total: int) -> None:
            # The first total sets the deadline's share for the tiles: the tissue tiles after a
            # mask pass, or every tile of the grid in a single pass (an upper bound: `score_slide`).
            if heartbeat.total is None:
                heartbeat.set_deadline(self.deadline_s(slide_bytes, total))
            heartbeat.progress(done, total)

        labels_uri = claim.labels_uri and self._stored(
            claim.labels_uri, "labels", "labels file", "labels-outside-storage"
        )
        model = self.models.get(claim.model_location, claim.model_variants)
        truth: GroundTruth | None = None
        if labels_uri:
            try:
                with open_uri(labels_uri) as handle:
                    truth = parse_labels(handle)
            except FileNotFoundError as exc:
                raise InvalidInput("the job's labels file is missing", "missing-labels") from exc
        started = time.perf_counter()
        try:
            slide = open_slide(slide_uri, mpp=claim.mpp, max_pixels=self.settings.max_slide_pixels)
        except FileNotFoundError as exc:
            raise InvalidInput("the job's slide file is missing", "missing-slide") from exc
        opened = time.perf_counter() - started
        with slide:
            score = score_slide(
                slide,
                model,
                batch_size=self.settings.batch_size,
                readers=self.settings.reader_threads,
                on_progress=progress,
                should_stop=heartbeat.stopped,
            )
            truth = ground_truth(slide, truth)
            if truth is not None:
                score = evaluate(score, truth)
        score.seconds["open"] = opened
        return score

    # -- endings ----------------------------------------------------------------------------

    def _succeed(self, claim: Claim, score: SlideScore, uris: dict[str, str]) -> str:
        started = time.perf_counter()
        with transaction(self.sessions) as session:
            if not jobstate.finish(
                session,
                claim.job_id,
                claim.owner,
                JobStatus.SUCCEEDED,
                now=utcnow(),
                tiles_done=len(score.rows),
                tiles_total=len(score.rows),
            ):
                # Cancelled (or past its deadline) while the outputs were stored: the files go.
                # Taken over after the lease ran out: the files are the new owner's to rewrite.
                session.rollback()
                if self._discard(claim):
                    log.info("job %s: ended before its results were committed", claim.job_id)
                    return "cancelled"
                log.info(
                    "job %s: lease lost before commit; results left to the new owner", claim.job_id
                )
                return "lost"
            results.write(
                session,
                score,
                uris,
                job_id=claim.job_id,
                client_id=claim.client_id,
                model_id=claim.model_id,
            )
        score.seconds["database"] = time.perf_counter() - started
        # Where the job's time went, one line a job: what the full-slide benchmark reads.
        seconds = {name: round(value, 4) for name, value in score.seconds.items()}
        log.info(
            "job %s: succeeded, %d tiles",
            claim.job_id,
            len(score.rows),
            extra={
                "job_id": str(claim.job_id),
                "seconds": seconds,
                "single_pass": score.single_pass,
                "peak_rss_mb": peak_rss_mb(),
            },
        )
        return "succeeded"

    def _fail(self, claim: Claim, kind: ErrorKind, message: str) -> None:
        def fail() -> bool:
            with transaction(self.sessions) as session:
                return jobstate.finish(
                    session,
                    claim.job_id,
                    claim.owner,
                    JobStatus.FAILED,
                    now=utcnow(),
                    error_kind=kind.value,
                    error_message=message,
                )

        if self._through_outage(claim, fail):
            self.storage.delete(results_prefix(claim.job_id))
        else:
            self._discard(claim)

    def _discard(self, claim: Claim) -> bool:
        """After a stop: remove the files only if the job really is cancelled (a job taken over
        is the new owner's, who rewrites them). True when it was cancelled."""
        with self.sessions() as session:
            status = jobstate.status_of(session, claim.job_id)
        if status is not None and jobstate.clears_results(status):
            self.storage.delete(results_prefix(claim.job_id))
            return True
        return False
