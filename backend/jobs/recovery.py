"""Recovery of jobs whose worker died or whose message was lost: the reaper's decisions and busy deliveries.

Every decision is one conditional UPDATE, the first statement of its own transaction, so several reapers (one per
worker) and the workers' own claims agree on a single outcome without locks held across round trips; the caller
commits after each decision and sends the re-queued jobs after that commit (see ``backend.jobs.reaper``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from backend.audit import service as audit
from backend.jobs.outbox import UNSENT_PREFIX
from backend.models import Job

# What the reaper decided about a stale running job.
REQUEUED, FAILED, CANCELLED = "queued", "failed", "cancelled"


def _now() -> datetime:
    return datetime.now(UTC)


def _stale(stale_after_s: float, now: datetime) -> ColumnElement[bool]:
    """A running job whose heartbeat is missing or older than the threshold (its worker is gone)."""
    cutoff = now - timedelta(seconds=stale_after_s)
    return and_(Job.status == "running", or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))


def stale_running_ids(db: Session, stale_after_s: float) -> list[int]:
    """Ids of running jobs whose heartbeat went stale."""
    return list(db.scalars(select(Job.id).where(_stale(stale_after_s, _now())).order_by(Job.id)))


def reap_running(db: Session, job_id: int, *, stale_after_s: float, max_attempts: int) -> str | None:
    """Settle one stale running job: cancelled if a cancel was asked, failed once its attempts are spent, else
    queued again (the caller then sends it). None when it is no longer stale (another reaper or a claim won)."""
    now = _now()
    lost = f"its worker sent no heartbeat for {stale_after_s:g} s"
    choices = (
        (CANCELLED, Job.cancel_requested.is_(True), {"finished_at": now, "message": "cancelled (its worker was lost)"}),
        (FAILED, Job.attempts >= max_attempts, {"finished_at": now, "message": "gave up"}),
        (REQUEUED, Job.attempts < max_attempts, {"worker": None, "sent_at": now, "message": f"re-sent: {lost}"}),
    )
    for outcome, condition, values in choices:
        moved = db.execute(
            update(Job)
            .where(Job.id == job_id, _stale(stale_after_s, now), condition)
            .values(status=outcome, **values)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount == 1:  # type: ignore[attr-defined]
            break
    else:
        return None
    job = db.get(Job, job_id)
    assert job is not None
    db.refresh(job)
    if outcome == FAILED:
        job.error = f"the job's worker was lost {job.attempts} times ({lost})"
    db.flush()
    audit.record(
        db,
        actor_user_id=None if outcome == REQUEUED else job.created_by,
        action="job.requeue" if outcome == REQUEUED else f"job.{outcome}",
        entity_type="job",
        entity_id=job.id,
        project_id=job.project_id,
        scan_id=job.scan_id,
        details={"kind": job.kind, "attempts": job.attempts, "reason": lost, "error": job.error},
    )
    return outcome


def _last_sent() -> ColumnElement[datetime]:
    return func.coalesce(Job.sent_at, Job.created_at)


def lost_queued_ids(db: Session, lost_after_s: float) -> list[int]:
    """Queued jobs whose message is presumed lost: never sent (broker was down), or the oldest-sent job of a queue
    that no live worker is busy on, waiting longer than lost_after_s (an idle worker would have taken it).

    Only the head of each queue is suspected, so a long queue behind a busy worker is never flooded with copies;
    a copy sent by mistake is harmless (the claim is a conditional UPDATE and a finished job's message is dropped).
    """
    now = _now()
    unsent = db.scalars(select(Job.id).where(Job.status == "queued", Job.message.startswith(UNSENT_PREFIX)))
    ids = set(unsent)
    busy = aliased(Job)
    for queue_name in db.scalars(select(Job.queue).where(Job.status == "queued").distinct()):
        head = db.execute(
            select(Job.id, _last_sent())
            .where(Job.status == "queued", Job.queue == queue_name)
            .order_by(_last_sent(), Job.id)
            .limit(1)
        ).first()
        if head is None or head[1] is None or head[1] >= now - timedelta(seconds=lost_after_s):
            continue
        fresh = now - timedelta(seconds=lost_after_s)
        worked_on = db.scalar(
            select(
                exists().where(
                    busy.queue == queue_name,
                    busy.status == "running",
                    busy.heartbeat_at.is_not(None),
                    busy.heartbeat_at >= fresh,
                )
            )
        )
        if not worked_on:
            ids.add(int(head[0]))
    return sorted(ids)


def take_resend(db: Session, job_id: int, lost_after_s: float) -> Job | None:
    """Claim the right to re-send a queued job's message (one reaper wins); None if someone else did it."""
    now = _now()
    cutoff = now - timedelta(seconds=lost_after_s)
    moved = db.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == "queued",
            or_(Job.message.startswith(UNSENT_PREFIX), _last_sent() < cutoff),
        )
        .values(sent_at=now, message="waiting in the queue (message re-sent)")
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return None
    job = db.get(Job, job_id)
    assert job is not None
    db.refresh(job)
    return job


def busy_retry_in(db: Session, job_id: int, stale_after_s: float) -> float | None:
    """For a delivery that could not claim its job: seconds after which to try again while the job is still
    active (another worker holds it with a fresh heartbeat), None when it is finished and the message may go."""
    job = db.get(Job, job_id)
    if job is None:
        return None
    db.refresh(job)
    if job.status == "queued":
        return 1.0
    if job.status != "running":
        return None
    beat = job.heartbeat_at or _now()
    # Come back just after the heartbeat would go stale: by then the holder either beat again or is gone.
    left = stale_after_s - (_now() - beat).total_seconds()
    return float(min(max(left + 1.0, 1.0), stale_after_s))


def beat(db: Session, job_id: int, worker: str) -> tuple[bool, bool]:
    """Refresh a running job's heartbeat for its owner: (still ours, cancel requested)."""
    moved = db.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.worker == worker)
        .values(heartbeat_at=_now())
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return False, False
    return True, bool(db.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
