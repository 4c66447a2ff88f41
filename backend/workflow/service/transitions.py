"""Transitions: one workflow action applied to a scan's task for a caller, and the task's history."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.errors import InvalidInput
from backend.models import Scan, ScanTask, TaskTransition, User
from backend.projects import service as projects
from backend.workflow.service.errors import LeaseHeld
from backend.workflow.service.permissions import ACTIONS, Caller, refusal
from backend.workflow.service.reviews import submit_review
from backend.workflow.service.settings import config_of
from backend.workflow.service.tasks import (
    apply,
    clear_lease,
    grant_lease,
    head_version,
    lease_held_error,
    locked_task,
    utcnow,
)


def transition(
    db: Session,
    scan: Scan,
    user: User,
    role: str,
    action: str,
    *,
    version_id: int | None = None,
    message: str = "",
) -> ScanTask:
    """Apply one workflow action to the scan's task for a caller (checks role, state, ownership and leases)."""
    if action in ("approve", "request_changes"):
        decision_version = version_id
        if decision_version is None:
            decision_version = scan.head_version_id
        if decision_version is None:
            raise InvalidInput(f"scan {scan.id} has no label version to review")
        review = submit_review(db, scan, user, role, version_id=decision_version, decision=action, message=message)
        task = db.get(ScanTask, review.scan_id)
        assert task is not None
        return task
    if action != "pre_annotate" and action not in ACTIONS:
        raise InvalidInput(f"unknown action {action!r}; use one of {list(ACTIONS)}")
    task = locked_task(db, scan)
    now = utcnow()
    caller = Caller(user.id, role)
    refused = refusal(task, caller, action, now=now)
    if refused is not None:
        if isinstance(refused, LeaseHeld):
            raise lease_held_error(db, task)
        raise refused
    config = config_of(projects.get_project(db, task.project_id))
    details: dict[str, Any] = {"message": message[:2000]} if message else {}
    if action == "start":
        if task.assignee_user_id is None:
            task.assignee_user_id = user.id
        grant_lease(task, user.id, config, now)
        apply(db, task, "start", "annotating", actor_user_id=user.id, now=now, details=details)
    elif action == "submit":
        submitted = head_version(db, scan, version_id, "submit")
        task.submitted_version_id = submitted
        task.submitted_at = now
        task.submitted_by_user_id = user.id
        task.review_level = 0
        clear_lease(task)
        apply(db, task, "submit", "submitted", actor_user_id=user.id, version_id=submitted, now=now, details=details)
    elif action == "start_review":
        task.review_level = 1
        task.reviewer_user_id = task.reviewer_user_id or user.id
        grant_lease(task, user.id, config, now)
        apply(
            db,
            task,
            "start_review",
            "in_review",
            actor_user_id=user.id,
            version_id=task.submitted_version_id,
            now=now,
            details={**details, "level_name": config.review_levels[0]},
        )
    elif action == "reopen":
        task.review_level = 0
        clear_lease(task)
        apply(db, task, "reopen", "annotating", actor_user_id=user.id, now=now, details=details)
    elif action == "adjudicate":
        adjudicate(db, scan, actor_user_id=user.id, reason=message)
    elif action == "resolve":
        task.review_level = 1
        task.reviewer_user_id = None
        clear_lease(task)
        apply(db, task, "resolve", "in_review", actor_user_id=user.id, now=now, details=details)
    return task


def list_transitions(db: Session, scan: Scan) -> list[TaskTransition]:
    """The scan's task history, oldest first."""
    query = select(TaskTransition).where(TaskTransition.scan_id == scan.id)
    return list(db.scalars(query.order_by(TaskTransition.at, TaskTransition.id)))


def adjudicate(db: Session, scan: Scan, *, actor_user_id: int | None, reason: str = "") -> ScanTask:
    """Send the scan's task to adjudication (readers disagree, or a lead asks); no-op when already there."""
    task = locked_task(db, scan)
    if task.state == "adjudication":
        return task
    task.review_level = 0
    clear_lease(task)
    apply(
        db,
        task,
        "adjudicate",
        "adjudication",
        actor_user_id=actor_user_id,
        now=utcnow(),
        details={"reason": reason[:2000]} if reason else None,
    )
    return task
