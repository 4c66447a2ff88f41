"""What every pipeline shares: claiming a job, a heartbeat, reporting progress, failing cleanly, transient errors."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from backend.core.config import get_settings
from backend.core.db import declare_write_intent, session_scope
from backend.core.errors import DomainError
from backend.jobs import recovery
from backend.jobs import service as jobs
from backend.models import Job
from worker.models.inference import InferenceCancelled
from worker.models.training import TrainingCancelled

log = logging.getLogger(__name__)

# Test hook: seconds a worker started with this variable waits after each claim (heartbeating), so a test can kill
# it mid-job with a tiny, fast job. Never set in a deployment.
HOLD_AFTER_CLAIM_ENV = "MASKLOOP_TEST_HOLD_AFTER_CLAIM_S"


class TransientError(Exception):
    """A failure worth retrying (database or broker briefly unreachable); the job is released first."""


class JobAbandoned(Exception):
    """The job was cancelled or taken over by another worker; stop without writing anything."""


class Deferred(Exception):
    """The job must wait for other work (e.g. attention for the scan's pre-annotations): it goes back to the queue
    and its message is delivered again in retry_in_s seconds, without counting as a retry or an attempt."""

    def __init__(self, reason: str, retry_in_s: float = 5.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_in_s = retry_in_s


class JobBusy(Exception):
    """Another worker holds the job with a fresh heartbeat: deliver this message again in retry_in_s seconds."""

    def __init__(self, job_id: int, retry_in_s: float) -> None:
        super().__init__(f"job {job_id} is held by a live worker; trying again in {retry_in_s:.1f} s")
        self.retry_in_s = retry_in_s


def worker_name() -> str:
    """This process's identity in job rows."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Claimed:
    """A job this worker owns."""

    job_id: int
    worker: str
    # Set by the heartbeat thread when the job was cancelled, failed by a lead or taken over: stop, write nothing.
    lost: threading.Event = field(default_factory=threading.Event)


def claim(job_id: int) -> Claimed | None:
    """Claim a job in its own committed transaction; None when another worker owns it or it is finished."""
    settings = get_settings()
    worker = worker_name()
    with _transient(), session_scope() as db:
        job = jobs.claim(
            db,
            job_id,
            worker,
            stale_after_s=settings.job_stale_after_s,
            max_attempts=settings.job_max_attempts,
        )
    return Claimed(job_id, worker) if job is not None else None


@contextmanager
def _transient() -> Iterator[None]:
    """Turn connection-level database failures into TransientError."""
    try:
        yield
    except (OperationalError, ConnectionError) as exc:
        raise TransientError(str(exc)) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise TransientError(str(exc)) from exc
        raise


class Reporter:
    """Throttled progress reports that double as the heartbeat and the cancellation check."""

    def __init__(self, claimed: Claimed, min_interval_s: float = 1.0) -> None:
        self.claimed = claimed
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._stop = False

    def update(self, percent: float, message: str, *, force: bool = False) -> None:
        """Write progress (at most once per interval unless forced); notices cancellation."""
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        with _transient(), session_scope() as db:
            alive = jobs.heartbeat(db, self.claimed.job_id, self.claimed.worker, percent, message)
        if not alive:
            self._stop = True

    def fraction_callback(self, start: float, end: float, message: str) -> Callable[[float], None]:
        """A callback mapping a 0..1 fraction of one stage onto start..end percent."""
        return lambda fraction: self.update(start + (end - start) * fraction, message)

    def should_stop(self) -> bool:
        """Whether the job was cancelled or taken over (seen at the last report or by the heartbeat thread)."""
        return self._stop or self.claimed.lost.is_set()


class Heartbeat:
    """A side thread that refreshes the job's heartbeat every `job_heartbeat_s` for the whole claimed period.

    A live worker's job never looks stale, however long one computation takes without reporting progress, and a
    dead worker's job looks stale after `job_stale_after_s`, so the reaper can re-send it quickly. The thread
    also notices a cancel request or a takeover (``Claimed.lost``). A failed beat is only logged: should the
    database stay away, the job goes stale and is re-sent, and the owned-job check keeps this worker from writing.
    """

    def __init__(self, claimed: Claimed, interval_s: float) -> None:
        self.claimed = claimed
        self.interval_s = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"job-{claimed.job_id}-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                with session_scope() as db:
                    ours, cancel = recovery.beat(db, self.claimed.job_id, self.claimed.worker)
            except Exception as exc:
                log.warning("heartbeat of job %s failed: %s", self.claimed.job_id, exc)
                continue
            if cancel or not ours:
                self.claimed.lost.set()
            if not ours:
                return


class BackgroundProgress:
    """Progress of a long computation (a fraction of it done) written by a side thread.

    Calling it only records the fraction, so the computation never waits for the heartbeat's database round trip;
    the thread writes the first fraction at once, then the newest one at most once per interval, and only when it
    advanced (the job's liveness is the ``Heartbeat`` thread's; a hung computation ends at the task time limit). A
    cancellation noticed by the thread is seen by ``Reporter.should_stop``; a transient database error in the
    thread is raised in the caller at its next report or at the end.
    """

    def __init__(
        self, reporter: Reporter, start: float, end: float, message: str, interval_s: float | None = None
    ) -> None:
        self.reporter = reporter
        self.start, self.end, self.message = start, end, message
        self.interval_s = reporter.min_interval_s if interval_s is None else interval_s
        self._fraction: float | None = None
        self._written: float | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._advanced = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-progress", daemon=True)

    def __enter__(self) -> BackgroundProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._advanced.set()
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error

    def __call__(self, fraction: float) -> None:
        """Record the fraction done (0..1); re-raise a failure of the reporting thread."""
        if self._error is not None:
            raise self._error
        self._fraction = fraction
        self._advanced.set()

    def _loop(self) -> None:
        while True:
            self._advanced.wait()
            if self._done.is_set():
                return
            self._advanced.clear()
            fraction = self._fraction
            if fraction is None or fraction == self._written:
                continue
            try:
                self.reporter.update(self.start + (self.end - self.start) * fraction, self.message, force=True)
            except BaseException as exc:  # handed to the computing thread
                self._error = exc
                return
            self._written = fraction
            if self._done.wait(self.interval_s):
                return


def owned_job(db: Session, claimed: Claimed) -> Job:
    """The job row, re-read; JobAbandoned if it was cancelled or another worker took it over."""
    job = jobs.get_job(db, claimed.job_id)
    db.refresh(job)
    if job.status != "running" or job.worker != claimed.worker or job.cancel_requested:
        raise JobAbandoned(f"job {job.id} is {job.status} (worker {job.worker}, cancel={job.cancel_requested})")
    return job


def closing_job(db: Session, claimed: Claimed) -> Job:
    """`owned_job` as the first statement of a pipeline's closing session, which stores its results and the outcome.

    On SQLite (WAL) that session takes the write lock now: a transaction that reads and then writes fails at once
    ('database is locked') when another connection commits in between, while one that starts with the lock makes
    the other writer wait its turn under the busy timeout. A no-op on PostgreSQL."""
    declare_write_intent(db)
    return owned_job(db, claimed)


def finish_with_error(claimed: Claimed, error: BaseException) -> None:
    """Record a clear failure; cancellations become 'cancelled', domain errors keep their message."""
    with session_scope() as db:
        if isinstance(error, JobAbandoned):
            job = jobs.get_job(db, claimed.job_id)
            if job.cancel_requested:
                jobs.mark_cancelled(db, claimed.job_id)
            return
        message = error.message if isinstance(error, DomainError) else f"{type(error).__name__}: {error}"
        jobs.fail(db, claimed.job_id, message)


def release(claimed: Claimed, *, message: str = "retrying after a transient error", count_attempt: bool = True) -> None:
    """Hand a job back to the queue before a retry (a transient failure is not the job's fault); a deferred job's
    claim is not counted as an attempt."""
    with session_scope() as db:
        job = jobs.get_job(db, claimed.job_id)
        if job.status == "running" and job.worker == claimed.worker:
            job.status = "queued"
            job.worker = None
            job.message = message[:500]
            job.sent_at = datetime.now(UTC)  # the retry's message is on its way
            if not count_attempt:
                job.attempts = max(0, job.attempts - 1)


def _busy(job_id: int) -> None:
    """After a failed claim: JobBusy while the job is still active elsewhere; return when it is finished."""
    settings = get_settings()
    with _transient(), session_scope() as db:
        retry_in = recovery.busy_retry_in(db, job_id, settings.job_stale_after_s)
    if retry_in is not None:
        raise JobBusy(job_id, retry_in)


def _hold_for_tests(claimed: Claimed) -> None:
    """The test hook: wait (heartbeating) after the claim while HOLD_AFTER_CLAIM_ENV is set."""
    hold = float(os.environ.get(HOLD_AFTER_CLAIM_ENV) or 0)
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline and not claimed.lost.is_set():
        time.sleep(0.05)


def run_claimed(job_id: int, body: Callable[[Claimed], None]) -> None:
    """Claim a job and run a pipeline body on it, with a heartbeat thread for the whole claimed period: transient
    failures release it for a retry, cancellation ends it as cancelled, and any other error is recorded on the job
    (its outputs were never committed). A job another live worker holds raises JobBusy (deliver again later); a
    finished one returns (its message is acknowledged)."""
    claimed = claim(job_id)
    if claimed is None:
        _busy(job_id)
        return
    try:
        with Heartbeat(claimed, get_settings().resolved_job_heartbeat_s):
            _hold_for_tests(claimed)
            body(claimed)
    except TransientError:
        release(claimed)
        raise
    except Deferred as wait:
        release(claimed, message=wait.reason, count_attempt=False)
        raise JobBusy(job_id, wait.retry_in_s) from None
    except JobAbandoned as exc:
        finish_with_error(claimed, exc)
    except Exception as exc:
        # A requested stop inside the ML code surfaces as its own exception types.
        cancelled = isinstance(exc, InferenceCancelled | TrainingCancelled)
        finish_with_error(claimed, JobAbandoned(str(exc)) if cancelled else exc)
