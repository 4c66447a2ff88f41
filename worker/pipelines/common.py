"""What every pipeline shares: claiming a job, reporting progress, failing cleanly, transient errors."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from backend.core.config import get_settings
from backend.core.db import session_scope
from backend.core.errors import DomainError
from backend.jobs import service as jobs
from backend.models import Job
from worker.models.inference import InferenceCancelled
from worker.models.training import TrainingCancelled


class TransientError(Exception):
    """A failure worth retrying (database or broker briefly unreachable); the job is released first."""


class JobAbandoned(Exception):
    """The job was cancelled or taken over by another worker; stop without writing anything."""


def worker_name() -> str:
    """This process's identity in job rows."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Claimed:
    """A job this worker owns."""

    job_id: int
    worker: str


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
        """Whether the job was cancelled or taken over (checked at the last report)."""
        return self._stop


class BackgroundProgress:
    """Progress of a long computation (a fraction of it done) written by a side thread.

    Calling it only records the fraction, so the computation never waits for the heartbeat's database round trip;
    the thread writes the first fraction at once, then the newest one at most once per interval, and only when it
    advanced (a computation that hangs stops the heartbeat, as before, and its job can be re-claimed). A
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


def release(claimed: Claimed) -> None:
    """Hand a job back to the queue before a retry (a transient failure is not the job's fault)."""
    with session_scope() as db:
        job = jobs.get_job(db, claimed.job_id)
        if job.status == "running" and job.worker == claimed.worker:
            job.status = "queued"
            job.worker = None
            job.message = "retrying after a transient error"


def run_claimed(job_id: int, body: Callable[[Claimed], None]) -> None:
    """Claim a job and run a pipeline body on it: transient failures release it for a retry, cancellation ends it
    as cancelled, and any other error is recorded on the job (its outputs were never committed)."""
    claimed = claim(job_id)
    if claimed is None:
        return
    try:
        body(claimed)
    except TransientError:
        release(claimed)
        raise
    except JobAbandoned as exc:
        finish_with_error(claimed, exc)
    except Exception as exc:
        # A requested stop inside the ML code surfaces as its own exception types.
        cancelled = isinstance(exc, InferenceCancelled | TrainingCancelled)
        finish_with_error(claimed, JobAbandoned(str(exc)) if cancelled else exc)
