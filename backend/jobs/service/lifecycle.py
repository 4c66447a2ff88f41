"""A job's life: create (sent after commit), claim (conditional UPDATE), heartbeat, finish, fail, cancel, list."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.db import get_or_404
from backend.core.errors import Conflict, InvalidInput
from backend.jobs import outbox
from backend.jobs.outbox import UNSENT_PREFIX
from backend.models import Job
from backend.models.jobs import JOB_KINDS, JOB_STATUSES

ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
QUEUE_OF_KIND = {"preannotate": "gpu", "train": "gpu", "attention": "cpu", "import": "cpu", "export": "cpu"}
QUEUE_OF_KIND["fuse"] = "cpu"
# An uploaded weights file loaded into its network with one forward pass on a tiny input (registry uploads).
QUEUE_OF_KIND["check_weights"] = "cpu"


def _now() -> datetime:
    return datetime.now(UTC)


def create_job(
    db: Session,
    *,
    project_id: int,
    kind: str,
    created_by: int | None,
    params: dict[str, Any] | None = None,
    scan_id: int | None = None,
    model_version_id: int | None = None,
) -> Job:
    """Record a queued job; it is sent to its queue once the transaction commits (backend.jobs.outbox)."""
    if kind not in JOB_KINDS:
        raise InvalidInput(f"unknown job kind {kind!r}")
    job = Job(
        project_id=project_id,
        kind=kind,
        queue=QUEUE_OF_KIND.get(kind, "cpu"),
        status="queued",
        params=params or {},
        scan_id=scan_id,
        model_version_id=model_version_id,
        created_by=created_by,
        message=outbox.WAITING,
    )
    db.add(job)
    db.flush()
    audit.record(
        db,
        actor_user_id=created_by,
        action="job.create",
        entity_type="job",
        entity_id=job.id,
        project_id=project_id,
        scan_id=scan_id,
        details={"kind": kind, "model_version_id": model_version_id},
    )
    outbox.send_after_commit(db, [job])
    return job


def get_job(db: Session, job_id: int) -> Job:
    """A job by id."""
    return get_or_404(db, Job, job_id, "job")


def queue_positions(db: Session, jobs: Sequence[Job]) -> dict[int, int]:
    """1-based position of each queued job in its queue (jobs ahead of it that are still queued, plus one)."""
    out: dict[int, int] = {}
    for job in jobs:
        if job.status != "queued":
            continue
        ahead = db.scalar(
            select(func.count(Job.id)).where(Job.queue == job.queue, Job.status == "queued", Job.id < job.id)
        )
        out[job.id] = int(ahead or 0) + 1
    return out


def list_jobs(
    db: Session, project_id: int, *, status: str | None, kind: str | None, offset: int, limit: int
) -> tuple[list[Job], int]:
    """A project's jobs, newest first, with the total."""
    query = select(Job).where(Job.project_id == project_id)
    if status:
        if status not in JOB_STATUSES:
            raise InvalidInput(f"unknown status {status!r}; use one of {list(JOB_STATUSES)}")
        query = query.where(Job.status == status)
    if kind:
        query = query.where(Job.kind == kind)
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = db.scalars(query.order_by(Job.id.desc()).offset(offset).limit(limit))
    return list(rows), int(total)


def claim(db: Session, job_id: int, worker: str, *, stale_after_s: int, max_attempts: int) -> Job | None:
    """Take a job for this worker: queued, or running with a stale heartbeat (its worker died). None if not ours.

    The conditional UPDATE makes two workers that receive the same message agree on one owner.
    """
    now = _now()
    stale = now - timedelta(seconds=stale_after_s)
    claimable = or_(
        Job.status == "queued",
        (Job.status == "running") & (or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale)),
    )
    moved = db.execute(
        update(Job)
        .where(Job.id == job_id, claimable, Job.cancel_requested.is_(False), Job.attempts < max_attempts)
        .values(
            status="running",
            attempts=Job.attempts + 1,
            worker=worker,
            started_at=now,
            heartbeat_at=now,
            message="started",
            error=None,
        )
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        job = db.get(Job, job_id)
        if job is not None:
            db.refresh(job)
            _settle_unclaimable(db, job, max_attempts)
        return None
    job = db.get(Job, job_id)
    assert job is not None
    db.refresh(job)
    return job


def _settle_unclaimable(db: Session, job: Job, max_attempts: int) -> None:
    """A job nobody may claim any more gets a final state instead of hanging in the list."""
    if job.status in ACTIVE and job.cancel_requested:
        _finalise(db, job, "cancelled", message="cancelled before it ran")
    elif job.status in ACTIVE and job.attempts >= max_attempts:
        _finalise(db, job, "failed", message="gave up", error=f"the job's worker was lost {job.attempts} times")


def heartbeat(db: Session, job_id: int, worker: str, progress: float, message: str) -> bool:
    """Record progress of a running job owned by worker; returns False when the job was cancelled or taken over."""
    moved = db.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.worker == worker)
        .values(progress=max(0.0, min(100.0, progress)), message=message[:500], heartbeat_at=_now())
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return False
    cancel = db.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return not cancel


def _finalise(db: Session, job: Job, status: str, *, message: str, error: str | None = None) -> None:
    job.status = status
    job.message = message[:500]
    job.error = error
    job.finished_at = _now()
    if status == "succeeded":
        job.progress = 100.0
    db.flush()
    audit.record(
        db,
        actor_user_id=job.created_by,
        action=f"job.{status}",
        entity_type="job",
        entity_id=job.id,
        project_id=job.project_id,
        scan_id=job.scan_id,
        details={"kind": job.kind, "error": error, "result": job.result},
    )


def succeed(db: Session, job: Job, result: dict[str, Any], message: str = "done") -> None:
    """Mark a job done with what it produced."""
    job.result = result
    _finalise(db, job, "succeeded", message=message)


def fail(db: Session, job_id: int, error: str) -> None:
    """Mark a job failed with a readable error (its partial outputs were never committed)."""
    job = get_job(db, job_id)
    if job.status in FINAL:
        return
    _finalise(db, job, "failed", message="failed", error=error[:10_000])


def mark_cancelled(db: Session, job_id: int) -> None:
    """Record that the worker stopped a job on request."""
    job = get_job(db, job_id)
    if job.status not in FINAL:
        _finalise(db, job, "cancelled", message="cancelled")


def request_cancel(db: Session, job: Job, actor_user_id: int, stale_after_s: float | None = None) -> Job:
    """Cancel a queued job at once; ask a running one to stop at its next progress report.

    A running job whose heartbeat is already older than stale_after_s has lost its worker: it is cancelled now
    (were the worker only slow, its next heartbeat finds the job no longer running and it stops without writing).
    """
    if job.status in FINAL:
        raise Conflict(f"job {job.id} already {job.status}", status=job.status)
    job.cancel_requested = True
    beat = job.heartbeat_at
    lost = stale_after_s is not None and (beat is None or beat < _now() - timedelta(seconds=stale_after_s))
    if job.status == "queued":
        _finalise(db, job, "cancelled", message=f"cancelled by user {actor_user_id}")
    elif lost:
        _finalise(db, job, "cancelled", message=f"cancelled by user {actor_user_id} (its worker was lost)")
    else:
        job.message = "cancelling"
        db.flush()
    return job


def force_fail(db: Session, job: Job, actor_user_id: int, reason: str | None) -> Job:
    """A lead ends a stuck job as failed at once; a worker still on it stops at its next heartbeat."""
    if job.status in FINAL:
        raise Conflict(f"job {job.id} already {job.status}", status=job.status)
    job.cancel_requested = True  # a live worker sees the request and writes nothing
    error = f"failed by user {actor_user_id}" + (f": {reason}" if reason else "")
    _finalise(db, job, "failed", message=f"failed by user {actor_user_id}", error=error)
    audit.record(
        db,
        actor_user_id=actor_user_id,
        action="job.force_fail",
        entity_type="job",
        entity_id=job.id,
        project_id=job.project_id,
        scan_id=job.scan_id,
        details={"kind": job.kind, "reason": reason, "worker": job.worker},
    )
    return job


def requeue_candidates(db: Session, stale_after_s: int) -> list[Job]:
    """Queued jobs that never reached the broker, or older than stale_after_s (a lost message), to send again."""
    cutoff = _now() - timedelta(seconds=stale_after_s)
    return list(
        db.scalars(
            select(Job)
            .where(Job.status == "queued", or_(Job.created_at < cutoff, Job.message.startswith(UNSENT_PREFIX)))
            .order_by(Job.id)
        )
    )


def unsent_jobs(db: Session) -> list[Job]:
    """Queued jobs whose message never reached the broker (it was down when they were committed)."""
    return list(
        db.scalars(select(Job).where(Job.status == "queued", Job.message.startswith(UNSENT_PREFIX)).order_by(Job.id))
    )
