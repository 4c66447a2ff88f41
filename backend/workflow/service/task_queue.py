"""Next task: the queue of open tasks a caller claims from, highest priority first, race-free."""

from __future__ import annotations

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.errors import InvalidInput, PermissionDenied
from backend.models import Project, ScanTask, User
from backend.workflow.service.leases import claim, lease_free
from backend.workflow.service.permissions import ANNOTATION_STATES, REVIEW_STATES, Caller, prior_approvers
from backend.workflow.service.settings import config_of
from backend.workflow.service.tasks import utcnow

NEXT_TASK_KINDS = ("annotate", "review")


def next_task(db: Session, project: Project, user: User, role: str, kind: str) -> ScanTask | None:
    """Claim (lease) the highest-priority open task for the caller; None when there is none.

    Candidates are unassigned or assigned to the caller, in the kind's states, without a live lease of someone
    else; the claim is a conditional UPDATE, so two concurrent callers never get the same scan.
    """
    caller = Caller(user.id, role)
    if kind not in NEXT_TASK_KINDS:
        raise InvalidInput(f"next-task kind must be one of {list(NEXT_TASK_KINDS)}")
    if kind == "annotate" and not caller.can("write_labels"):
        raise PermissionDenied(f"role {role!r} may not annotate")
    if kind == "review" and not caller.can("review"):
        raise PermissionDenied(f"role {role!r} may not review")
    config = config_of(project)
    states = ANNOTATION_STATES if kind == "annotate" else REVIEW_STATES
    owner = ScanTask.assignee_user_id if kind == "annotate" else ScanTask.reviewer_user_id
    conditions: list[ColumnElement[bool]] = [
        ScanTask.project_id == project.id,
        ScanTask.state.in_(states),
        or_(owner.is_(None), owner == user.id),
    ]
    if kind == "review":
        conditions.append(or_(ScanTask.submitted_by_user_id.is_(None), ScanTask.submitted_by_user_id != user.id))
    seen: set[int] = set()
    for _ in range(20):
        now = utcnow()
        query = (
            select(ScanTask.scan_id)
            .where(*conditions, lease_free(user.id, now))
            .order_by(ScanTask.priority.desc(), ScanTask.scan_id)
            .limit(len(seen) + 10)
        )
        candidates = [int(i) for i in db.scalars(query) if int(i) not in seen]
        if not candidates:
            return None
        for scan_id in candidates:
            seen.add(scan_id)
            if kind == "review" and not caller.is_lead:
                # Not someone who approved an earlier level of this round.
                task = db.get(ScanTask, scan_id)
                if task is not None and user.id in prior_approvers(db, [task]).get(scan_id, set()):
                    continue
            if claim(db, scan_id, user.id, config, now, *conditions):
                # One SELECT that also refreshes a row the session already held (the claim UPDATE bypassed it).
                task = db.get(ScanTask, scan_id, populate_existing=True)
                assert task is not None
                audit.record(
                    db,
                    actor_user_id=user.id,
                    action="task.claim",
                    entity_type="scan_task",
                    entity_id=scan_id,
                    project_id=project.id,
                    scan_id=scan_id,
                    details={"kind": kind, "priority": task.priority},
                )
                db.flush()
                return task
    return None
