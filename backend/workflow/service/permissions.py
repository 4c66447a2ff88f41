"""Who may do what to a task: the actions, the states each applies from, and the caller's refusal reasons."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.errors import Conflict, PermissionDenied
from backend.models import Review, ScanTask
from backend.models.workflow import TASK_STATES
from backend.projects import service as projects
from backend.workflow.service.errors import InvalidTransition, LeaseHeld
from backend.workflow.service.settings import WorkflowConfig
from backend.workflow.service.tasks import aware, lease_live

ANNOTATION_STATES = ("new", "pre_annotated", "annotating", "changes_requested")
REVIEW_STATES = ("submitted", "in_review")
# Transitions a person may ask for through the API ("pre_annotate" is done by model label versions only).
ACTIONS = (
    "start",
    "submit",
    "start_review",
    "approve",
    "request_changes",
    "reopen",
    "adjudicate",
    "resolve",
)
# Further names that may appear in a task's allowed_actions (not transitions).
EXTRA_ACTIONS = ("edit", "lease", "release_lease", "assign", "comment")
FROM_STATES: dict[str, tuple[str, ...]] = {
    "pre_annotate": ("new",),
    "start": ("new", "pre_annotated", "changes_requested"),
    "submit": ("annotating",),
    "start_review": ("submitted",),
    "approve": ("in_review",),
    "request_changes": ("in_review",),
    "reopen": ("approved",),
    "adjudicate": tuple(s for s in TASK_STATES if s != "adjudication"),
    "resolve": ("adjudication",),
}
# Reopen, adjudicate and resolve steer the workflow: the project's lead rule decides who may.
_NEEDS: dict[str, str] = {
    "start": "write_labels",
    "submit": "write_labels",
    "start_review": "review",
    "approve": "review",
    "request_changes": "review",
    "reopen": projects.LEAD_PERMISSION,
    "adjudicate": projects.LEAD_PERMISSION,
    "resolve": projects.LEAD_PERMISSION,
}


@dataclass(frozen=True)
class Caller:
    """The person acting and their project role."""

    user_id: int
    role: str

    def can(self, permission: str) -> bool:
        """Whether the role grants a permission."""
        return permission in projects.PERMISSIONS.get(self.role, frozenset())

    @property
    def is_lead(self) -> bool:
        """Leads and admins steer the workflow: assign, reopen, force-release, adjudicate."""
        return projects.is_lead(self.role)


def refusal(
    task: ScanTask,
    caller: Caller,
    action: str,
    *,
    now: datetime,
    prior_approvers: Collection[int] = (),
) -> PermissionDenied | Conflict | None:
    """Why the caller may not apply the action to the task now (None when they may)."""
    if action == "pre_annotate":
        return PermissionDenied("pre_annotate happens when a model label version is saved; it cannot be asked for")
    if action not in _NEEDS:
        return None
    permission = _NEEDS[action]
    if not caller.can(permission):
        return PermissionDenied(f"role {caller.role!r} may not {action.replace('_', ' ')} a task")
    if task.state not in FROM_STATES[action]:
        return InvalidTransition(
            f"cannot {action.replace('_', ' ')} a task in state {task.state!r}",
            state=task.state,
            allowed_from=list(FROM_STATES[action]),
        )
    lead = caller.is_lead
    other_lease = lease_live(task, now) and task.lease_user_id != caller.user_id
    if action == "start":
        if task.assignee_user_id not in (None, caller.user_id) and not lead:
            return PermissionDenied(f"scan {task.scan_id} is assigned to someone else")
    elif action == "submit":
        mine = caller.user_id in (task.assignee_user_id, task.lease_user_id if lease_live(task, now) else None)
        unowned = task.assignee_user_id is None and not lease_live(task, now)
        if not (lead or mine or unowned):
            return PermissionDenied("only the assignee, the lease holder or a lead may submit this scan")
        if lead:
            other_lease = False
    elif action in ("start_review", "approve", "request_changes"):
        if task.submitted_by_user_id == caller.user_id and not lead:
            return PermissionDenied("you submitted this scan; another reviewer (or a lead) must review it")
        if task.reviewer_user_id not in (None, caller.user_id) and not lead:
            return PermissionDenied(f"scan {task.scan_id} is assigned to another reviewer")
        if action == "approve" and caller.user_id in prior_approvers and not lead:
            return PermissionDenied("you approved an earlier review level of this scan; another reviewer must approve")
    elif lead:
        other_lease = False  # reopen, adjudicate, resolve: a lead overrides leases
    if other_lease and action in ("start", "submit", "start_review", "approve", "request_changes"):
        return LeaseHeld(f"another user holds the edit lease of scan {task.scan_id}")
    return None


def prior_approvers(db: Session, tasks: Sequence[ScanTask]) -> dict[int, set[int]]:
    """For tasks in review beyond level 1: who approved an earlier level since the last submit (one query)."""
    wanted = {t.scan_id: t for t in tasks if t.state == "in_review" and t.review_level > 1}
    if not wanted:
        return {}
    rows = db.execute(
        select(Review.scan_id, Review.reviewer_user_id, Review.review_level, Review.created_at).where(
            Review.scan_id.in_(wanted), Review.decision == "approve"
        )
    ).all()
    out: dict[int, set[int]] = {}
    for scan_id, reviewer, level, created in rows:
        task = wanted[scan_id]
        since = aware(task.submitted_at) if task.submitted_at else None
        if reviewer is not None and level < task.review_level and (since is None or aware(created) >= since):
            out.setdefault(int(scan_id), set()).add(int(reviewer))
    return out


def allowed_actions(
    task: ScanTask, caller: Caller, *, now: datetime, prior: Collection[int] = (), config: WorkflowConfig
) -> list[str]:
    """Everything the caller may do to the task now: transitions plus edit, lease, release_lease, assign, comment."""
    out = [a for a in ACTIONS if refusal(task, caller, a, now=now, prior_approvers=prior) is None]
    held_by_other = lease_live(task, now) and task.lease_user_id != caller.user_id
    if caller.can("write_labels") and task.state != "approved" and not held_by_other:
        out.extend(("edit", "lease"))
    if task.lease_user_id is not None and (task.lease_user_id == caller.user_id or caller.is_lead):
        out.append("release_lease")
    if caller.is_lead:
        out.append("assign")
    if caller.can("write_labels"):
        out.append("comment")
    del config
    return out
