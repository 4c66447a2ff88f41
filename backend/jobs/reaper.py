"""The reaper: a daemon thread in every worker process that re-sends or ends jobs whose worker died.

It runs wherever a job can run (each `maskloop worker`, and the solo worker that `maskloop serve` starts with the
embedded SQLite broker), needs no extra process, and several copies are safe: each decision is a conditional
UPDATE that only one reaper (or claim) wins. It owns a small connection-less engine (NullPool) so that a prefork
worker's parent never holds pooled connections its re-forked children could inherit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from backend.core.config import Settings
from backend.core.db import make_engine
from backend.jobs import outbox, recovery
from backend.models import Job

log = logging.getLogger(__name__)


@dataclass
class ReapReport:
    """What one pass did, by job id."""

    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    resent: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed or self.cancelled or self.resent)


class Reaper:
    """Periodic passes over the jobs table: stale running jobs are re-sent, failed or cancelled; lost queued
    messages are re-sent. ``tick`` is one pass (tests call it directly); ``start`` runs it every interval."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        url = settings.resolved_database_url
        sqlite = url.startswith("sqlite")
        engine = make_engine(url, poolclass=NullPool) if sqlite else create_engine(url, poolclass=NullPool)
        self._factory = sessionmaker(bind=engine, expire_on_commit=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def _session(self) -> Iterator[Session]:
        session = self._factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def tick(self) -> ReapReport:
        """One pass; every decision commits on its own before any message is sent."""
        settings = self.settings
        stale = settings.job_stale_after_s
        # A queued job waits this long at the head of an idle queue before its message counts as lost.
        lost_after = 2 * stale
        report = ReapReport()
        with self._session() as db:
            running = recovery.stale_running_ids(db, stale)
        for job_id in running:
            with self._session() as db:
                outcome = recovery.reap_running(db, job_id, stale_after_s=stale, max_attempts=settings.job_max_attempts)
            if outcome == recovery.REQUEUED:
                self._send(job_id)
                report.requeued.append(job_id)
            elif outcome == recovery.FAILED:
                report.failed.append(job_id)
            elif outcome == recovery.CANCELLED:
                report.cancelled.append(job_id)
        with self._session() as db:
            queued = recovery.lost_queued_ids(db, lost_after)
        for job_id in queued:
            with self._session() as db:
                taken = recovery.take_resend(db, job_id, lost_after)
            if taken is not None:
                self._send(job_id)
                report.resent.append(job_id)
        if report:
            log.warning("job reaper: %s", report)
        return report

    def _send(self, job_id: int) -> None:
        """Send a committed decision's message (a failure is noted on the job and retried on the next pass)."""
        with self._session() as db:
            job = db.get(Job, job_id)
            if job is not None and job.status == "queued":
                outbox.send_after_commit(db, [job], resend=True)  # sent when this session commits

    def _loop(self) -> None:
        interval = self.settings.resolved_job_reaper_interval_s
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a database or broker outage: try again on the next pass
                log.exception("job reaper pass failed")
            self._stop.wait(interval)

    def start(self) -> None:
        """Run passes every `job_reaper_interval_s` on a daemon thread (the first one at once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="job-reaper", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current pass."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
