"""Dataset import use cases: launch (or resume) a run of per-case `cpu` jobs; import a run's cases here.

`launch_import` is one transaction: the run, its case rows and one job per case still to import commit together,
and the jobs reach the broker after that commit (backend.jobs.outbox). Any number of workers then import the
cases in parallel, each case in its own transaction (worker/pipelines/import_case.py).

`import_here` is the command line's way without workers (`maskloop import --here`): the launch keeps its jobs off
the broker and this process claims them one after another, running the same steps as a worker, with a
heartbeat, so a worker's reaper treats a killed command like a killed worker (its case is imported again).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.config import get_settings
from backend.core.db import declare_write_intent, session_scope
from backend.imports import service as imports
from backend.jobs import outbox, recovery
from backend.jobs import service as jobs
from backend.models import Job, Project, User


def launch_import(
    db: Session, project: Project, root: Path, *, actor: User | None, here: bool = False
) -> imports.Launch:
    """Launch or resume the import of a dataset folder on this server (the command line: any readable folder).

    With `here`, the jobs are kept off the broker: the caller imports them with `import_here`.
    """
    declare_write_intent(db)
    launched = imports.launch(db, project, imports.resolve_local(root), actor)
    if here:
        outbox.withhold(db, launched.jobs)
    db.commit()
    return launched


def launch_import_under_root(
    db: Session, project: Project, path: str, *, actor: User, import_root: Path | None
) -> imports.Launch:
    """Launch or resume an import requested over the API: only a folder under the import root (403 otherwise)."""
    root = imports.resolve_under_root(path, import_root)
    declare_write_intent(db)
    launched = imports.launch(db, project, root, actor)
    db.commit()
    return launched


@dataclass(frozen=True)
class CaseDone:
    """What happened to one case imported here: its report line (None when another process held its job)."""

    job_id: int
    line: imports.CaseLine | None


class _Heartbeat:
    """Keeps a claimed job's heartbeat fresh from a side thread while this process imports its case."""

    def __init__(self, job_id: int, worker: str, interval_s: float) -> None:
        self.job_id, self.worker, self.interval_s = job_id, worker, interval_s
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"import-job-{job_id}-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                with session_scope() as db:
                    ours, cancel = recovery.beat(db, self.job_id, self.worker)
            except Exception:
                continue  # a missed beat: the job may go stale, and then the owned-job check stops the write
            if cancel or not ours:
                self.lost.set()
                return


def _owned(db: Session, job_id: int, worker: str) -> Job | None:
    job = jobs.get_job(db, job_id)
    db.refresh(job)
    return job if job.status == "running" and job.worker == worker and not job.cancel_requested else None


def _import_job_here(blobs: BlobStore, job_id: int, worker: str, threads: int | None) -> CaseDone:
    """Claim one import job and run its case's three steps in this process."""
    settings = get_settings()
    with session_scope() as db:
        declare_write_intent(db)
        claimed = jobs.claim(
            db, job_id, worker, stale_after_s=settings.job_stale_after_s, max_attempts=settings.job_max_attempts
        )
        work = imports.begin_case(db, claimed, worker) if claimed is not None else None
    if claimed is None:
        return CaseDone(job_id, None)
    if work is not None:
        with _Heartbeat(job_id, worker, settings.resolved_job_heartbeat_s):
            try:
                prepared = imports.prepare_case(blobs, work, threads=threads)
                with session_scope() as db:
                    declare_write_intent(db)
                    job = _owned(db, job_id, worker)
                    if job is not None:
                        imports.complete_case(db, blobs, job, work, prepared)
            except Exception as exc:
                with session_scope() as db:
                    if _owned(db, job_id, worker) is not None:
                        imports.fail_case(db, work, exc)
                        jobs.fail(db, job_id, imports.describe_failure(exc)[1])
    with session_scope() as db:
        return CaseDone(job_id, imports.case_of_job(db, job_id))


def import_here(
    blobs: BlobStore,
    run_id: int,
    *,
    threads: int | None = None,
    on_case: Callable[[CaseDone], None] | None = None,
) -> None:
    """Import a run's unfinished cases in this process, one after another (each case in its own transactions).

    A case whose job another process holds (a worker, another command) is left to it.
    """
    worker = f"{socket.gethostname()}:{os.getpid()}:import"
    with session_scope() as db:
        job_ids = imports.runnable_job_ids(db, imports.get_run(db, run_id))
    for job_id in job_ids:
        done = _import_job_here(blobs, job_id, worker, threads)
        if on_case is not None:
            on_case(done)


def wait_for_run(
    run_id: int, *, on_case: Callable[[imports.CaseLine], None] | None = None, poll_s: float = 1.0
) -> imports.RunProgress:
    """Follow a run until no case is pending or running, calling `on_case` for each case as it finishes."""
    seen_at, seen_id = None, 0
    while True:
        with session_scope() as db:
            run = imports.get_run(db, run_id)
            since = seen_at or run.launched_at
            for line in imports.finished_since(db, run, seen_id if seen_at else 0, since):
                seen_at, seen_id = line.row.finished_at, line.row.id
                if on_case is not None:
                    on_case(line)
            progress = imports.run_progress(db, run)
        if progress.status == "finished":
            return progress
        time.sleep(poll_s)
