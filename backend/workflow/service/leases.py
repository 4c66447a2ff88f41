"""Edit leases: one editor per scan at a time, taken by a conditional UPDATE so two people never both hold it."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, update
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.errors import PermissionDenied
from backend.models import Scan, ScanTask, User
from backend.projects import service as projects
from backend.workflow.service.permissions import Caller
from backend.workflow.service.settings import WorkflowConfig, config_of
from backend.workflow.service.tasks import (
    approved_error,
    clear_lease,
    ensure_task,
    lease_held_error,
    locked_task,
    utcnow,
)


def acquire_lease(db: Session, scan: Scan, user: User, role: str) -> ScanTask:
    """Take or renew (heartbeat) the scan's edit lease; 409 lease_held while someone else holds a live one."""
    task = ensure_task(db, scan)
    caller = Caller(user.id, role)
    if not caller.can("write_labels"):
        raise PermissionDenied(f"role {role!r} may not edit labels, so it cannot take an edit lease")
    if task.state == "approved":
        raise approved_error(task)
    config = config_of(projects.get_project(db, task.project_id))
    claimed = claim(db, scan.id, user.id, config, utcnow())
    db.refresh(task)
    if not claimed:
        raise lease_held_error(db, task)
    return task


def lease_free(user_id: int, now: datetime) -> ColumnElement[bool]:
    """SQL condition: the task's lease is free for the user at this instant (none, theirs, or expired)."""
    return or_(
        ScanTask.lease_user_id.is_(None),
        ScanTask.lease_user_id == user_id,
        ScanTask.lease_expires_at.is_(None),
        ScanTask.lease_expires_at <= now,
    )


def claim(
    db: Session, scan_id: int, user_id: int, config: WorkflowConfig, now: datetime, *extra: ColumnElement[bool]
) -> bool:
    """Conditional UPDATE: the lease becomes the user's only if it is free (or theirs) at this instant."""
    result = db.execute(
        update(ScanTask)
        .where(ScanTask.scan_id == scan_id, lease_free(user_id, now), *extra)
        .values(
            lease_user_id=user_id,
            lease_heartbeat_at=now,
            lease_expires_at=now + timedelta(minutes=config.lease_minutes),
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release_lease(db: Session, scan: Scan, user: User, role: str) -> ScanTask:
    """Give the lease up (its holder), or force-release it (a lead)."""
    task = locked_task(db, scan)
    if task.lease_user_id is None:
        return task
    caller = Caller(user.id, role)
    holder = task.lease_user_id
    if holder != user.id and not caller.is_lead:
        raise PermissionDenied("only the lease holder or a lead may release this lease")
    clear_lease(task)
    task.updated_at = utcnow()
    audit.record(
        db,
        actor_user_id=user.id,
        action="task.lease_release",
        entity_type="scan_task",
        entity_id=task.scan_id,
        project_id=task.project_id,
        scan_id=task.scan_id,
        details={"holder_user_id": holder, "forced": holder != user.id},
    )
    db.flush()
    return task
