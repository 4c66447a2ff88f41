"""Assignment: a lead gives scans (or some of their structures) to an annotator or a reviewer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.errors import InvalidInput
from backend.models import Membership, Project, Scan, ScanTask, User
from backend.projects import service as projects
from backend.workflow.service.permissions import ANNOTATION_STATES, REVIEW_STATES
from backend.workflow.service.tasks import ensure_task, utcnow


def assign(
    db: Session,
    project: Project,
    actor: User,
    *,
    scan_ids: Sequence[int],
    user_id: int | None,
    role: str = "annotator",
    structure_ids: Sequence[int] | None = None,
) -> int:
    """Assign scans (optionally a subset of structures) to an annotator or a reviewer; None unassigns."""
    if role not in ("annotator", "reviewer"):
        raise InvalidInput("assignment role must be 'annotator' or 'reviewer'")
    ids = sorted(set(scan_ids))
    if not ids:
        raise InvalidInput("give at least one scan id")
    if len(ids) > 50000:
        raise InvalidInput("assign at most 50000 scans at once")
    if user_id is not None:
        member_role = db.scalar(
            select(Membership.role).where(Membership.project_id == project.id, Membership.user_id == user_id)
        )
        assignee = db.get(User, user_id)
        if assignee is None or (member_role is None and not assignee.is_admin):
            raise InvalidInput(f"user {user_id} is not a member of this project")
        effective = "admin" if assignee.is_admin else str(member_role)
        needed = "write_labels" if role == "annotator" else "review"
        if needed not in projects.PERMISSIONS[effective]:
            raise InvalidInput(f"user {user_id} has role {effective!r}, which cannot {needed.replace('_', ' ')}")
    found = set(db.scalars(select(Scan.id).where(Scan.project_id == project.id, Scan.id.in_(ids))))
    missing = [i for i in ids if i not in found]
    if missing:
        raise InvalidInput(f"scans {missing[:20]} are not in this project", missing=missing[:100])
    structures: list[int] | None = None
    if structure_ids:
        known = {s.id for s in projects.structures_of(db, project.id)}
        unknown = sorted(set(structure_ids) - known)
        if unknown:
            raise InvalidInput(f"structures {unknown[:20]} are not in this project's schema")
        structures = sorted(set(structure_ids))
    without_task = select(Scan).outerjoin(ScanTask, ScanTask.scan_id == Scan.id)
    for scan in db.scalars(without_task.where(Scan.id.in_(ids), ScanTask.scan_id.is_(None))):
        ensure_task(db, scan)
    values: dict[str, Any] = {"updated_at": utcnow()}
    if role == "annotator":
        values["assignee_user_id"] = user_id
        values["assigned_structure_ids"] = structures
        owner_states: tuple[str, ...] = ANNOTATION_STATES
    else:
        values["reviewer_user_id"] = user_id
        owner_states = REVIEW_STATES
    result = db.execute(
        update(ScanTask)
        .where(ScanTask.project_id == project.id, ScanTask.scan_id.in_(ids))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    # A reassignment takes the lease away from whoever was working on it in that phase.
    db.execute(
        update(ScanTask)
        .where(
            ScanTask.project_id == project.id,
            ScanTask.scan_id.in_(ids),
            ScanTask.state.in_(owner_states),
            ScanTask.lease_user_id.is_not(None),
            ScanTask.lease_user_id != (user_id if user_id is not None else -1),
        )
        .values(lease_user_id=None, lease_expires_at=None, lease_heartbeat_at=None)
        .execution_options(synchronize_session=False)
    )
    db.expire_all()
    audit.record(
        db,
        actor_user_id=actor.id,
        action="task.assign",
        entity_type="project",
        entity_id=project.id,
        project_id=project.id,
        details={"scan_ids": ids[:1000], "count": len(ids), "user_id": user_id, "role": role, "structures": structures},
    )
    db.flush()
    return int(result.rowcount)  # type: ignore[attr-defined]
