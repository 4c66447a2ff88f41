"""Scan tasks: one per scan, created on demand; leases on the row; every state change recorded and audited.

The primitives here are shared by the transition, lease, review and assignment modules of the package.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.errors import InvalidInput
from backend.models import LabelVersion, Scan, ScanTask, TaskTransition, User
from backend.workflow.service.errors import LeaseHeld, NotHead, ScanApproved
from backend.workflow.service.settings import WorkflowConfig


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """A stored time as timezone-aware UTC (SQLite hands them back naive)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _initial_state(db: Session, scan: Scan) -> str:
    if scan.head_version_id is None:
        return "new"
    kind = db.scalar(select(LabelVersion.kind).where(LabelVersion.id == scan.head_version_id))
    return {"model": "pre_annotated", "human": "annotating"}.get(kind or "", "new")


def ensure_task(db: Session, scan: Scan) -> ScanTask:
    """The scan's task, created (state from its head version's kind) when it has none yet."""
    task = db.get(ScanTask, scan.id)
    if task is None:
        task = ScanTask(
            scan_id=scan.id,
            project_id=scan.project_id,
            state=_initial_state(db, scan),
            review_level=0,
            priority=0.0,
            active_seconds=0.0,
            open_findings=0,
            updated_at=utcnow(),
        )
        db.add(task)
        db.flush()
    return task


def locked_task(db: Session, scan: Scan) -> ScanTask:
    """The scan's task re-read under a row lock (PostgreSQL), so concurrent transitions serialise."""
    ensure_task(db, scan)
    task = db.scalar(
        select(ScanTask).where(ScanTask.scan_id == scan.id).with_for_update().execution_options(populate_existing=True)
    )
    assert task is not None
    return task


def lease_live(task: ScanTask, now: datetime | None = None) -> bool:
    """Whether the task's edit lease is held and not expired."""
    if task.lease_user_id is None or task.lease_expires_at is None:
        return False
    return aware(task.lease_expires_at) > (now or utcnow())


def _display(user: User | None) -> str | None:
    if user is None:
        return None
    return user.display_name or user.email


def usernames(db: Session, ids: Collection[int | None]) -> dict[int, str]:
    """Display names of the given users (one query)."""
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = db.execute(select(User.id, User.display_name, User.email).where(User.id.in_(wanted))).all()
    return {int(uid): (name or email) for uid, name, email in rows}


def lease_held_error(db: Session, task: ScanTask) -> LeaseHeld:
    """The 409 naming who holds the task's lease and until when."""
    holder = db.get(User, task.lease_user_id) if task.lease_user_id else None
    expires = aware(task.lease_expires_at).isoformat() if task.lease_expires_at else None
    return LeaseHeld(
        f"{_display(holder) or 'another user'} is editing scan {task.scan_id} (lease until {expires}); "
        "wait for them to finish or ask a lead to release the lease",
        holder_user_id=task.lease_user_id,
        holder=_display(holder),
        expires_at=expires,
    )


def approved_error(task: ScanTask) -> ScanApproved:
    """The 409 saying the scan is approved and read-only."""
    return ScanApproved(
        f"scan {task.scan_id} is approved (version {task.approved_version_id}) and read-only; "
        "a lead must reopen it before its labels can change",
        approved_version_id=task.approved_version_id,
    )


def grant_lease(task: ScanTask, user_id: int, config: WorkflowConfig, now: datetime) -> None:
    """Give (or renew) the task's edit lease to a user for the project's lease length."""
    task.lease_user_id = user_id
    task.lease_heartbeat_at = now
    task.lease_expires_at = now + timedelta(minutes=config.lease_minutes)


def clear_lease(task: ScanTask) -> None:
    """Drop the task's edit lease."""
    task.lease_user_id = None
    task.lease_expires_at = None
    task.lease_heartbeat_at = None


def head_version(db: Session, scan: Scan, version_id: int | None, what: str) -> int:
    """The version an action applies to: the given one, which must be the scan's head (read fresh), or the head."""
    head = db.scalar(select(Scan.head_version_id).where(Scan.id == scan.id).execution_options(populate_existing=True))
    if version_id is None:
        if head is None:
            raise InvalidInput(f"scan {scan.id} has no label version to {what}")
        return int(head)
    version = db.get(LabelVersion, version_id)
    if version is None or version.scan_id != scan.id:
        raise InvalidInput(f"version {version_id} is not a version of scan {scan.id}")
    if version_id != head:
        raise NotHead(
            f"version {version_id} is not the head of scan {scan.id} (head is {head}); {what} the head version",
            head_version_id=head,
        )
    return version_id


def apply(
    db: Session,
    task: ScanTask,
    action: str,
    to_state: str,
    *,
    actor_user_id: int | None,
    version_id: int | None = None,
    now: datetime,
    details: dict[str, Any] | None = None,
) -> None:
    """Change the state and record the TaskTransition row and the audit event."""
    from_state = task.state
    task.state = to_state
    task.updated_at = now
    db.add(
        TaskTransition(
            project_id=task.project_id,
            scan_id=task.scan_id,
            action=action,
            from_state=from_state,
            to_state=to_state,
            review_level=task.review_level,
            actor_user_id=actor_user_id,
            version_id=version_id,
            at=now,
        )
    )
    audit.record(
        db,
        actor_user_id=actor_user_id,
        action=f"task.{action}",
        entity_type="scan_task",
        entity_id=task.scan_id,
        project_id=task.project_id,
        scan_id=task.scan_id,
        details={
            "from": from_state,
            "to": to_state,
            "review_level": task.review_level,
            "version_id": version_id,
            **(details or {}),
        },
    )
    db.flush()
