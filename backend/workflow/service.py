"""Review workflow: one task per scan moving through states, edit leases, assignment, reviews and comments.

Kept free of the labels, quality and jobs services (those call in here): it reads and writes the ORM tables
directly, so a label save can ask `check_can_save` and report `on_version_created` without an import cycle.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from backend.models import (
    ActivityDaily,
    LabelVersion,
    Membership,
    Project,
    ReaderSet,
    ReaderSetMember,
    Review,
    ReviewComment,
    Scan,
    ScanTask,
    TaskTransition,
    User,
)
from backend.models.workflow import TASK_STATES
from backend.projects import service as projects

DEFAULT_REVIEW_LEVELS = ("review",)
DEFAULT_LEASE_MINUTES = 20.0
MAX_ACTIVITY_SECONDS = 600.0
# The project permission that marks a lead (or admin) in the workflow: assign, reopen, force-release, adjudicate.
LEAD_PERMISSION = "assign"

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
_FROM_STATES: dict[str, tuple[str, ...]] = {
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
_NEEDS: dict[str, str] = {
    "start": "write_labels",
    "submit": "write_labels",
    "start_review": "review",
    "approve": "review",
    "request_changes": "review",
    "reopen": LEAD_PERMISSION,
    "adjudicate": LEAD_PERMISSION,
    "resolve": LEAD_PERMISSION,
}
WORKLIST_SORTS = ("priority", "updated", "case")
AnySelect = Select[*tuple[Any, ...]]
NEXT_TASK_KINDS = ("annotate", "review")
_SETTINGS_KEYS = ("review_levels", "lease_minutes", "multi_reader", "qa", "plausible_volume_ml")


class ScanApproved(Conflict):
    """The scan is approved: its labels are read-only until a lead reopens it."""

    code = "scan_approved"


class LeaseHeld(Conflict):
    """Someone else holds the live edit lease of the scan."""

    code = "lease_held"


class InvalidTransition(Conflict):
    """The action does not apply to the task's current state."""

    code = "invalid_transition"


class NotHead(Conflict):
    """The named version is not the scan's head version."""

    code = "not_head"


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- configuration -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkflowConfig:
    """A project's workflow settings with defaults filled in."""

    review_levels: tuple[str, ...] = DEFAULT_REVIEW_LEVELS
    lease_minutes: float = DEFAULT_LEASE_MINUTES


def config_of(project: Project) -> WorkflowConfig:
    """The workflow configuration of a project (one review level and 20-minute leases by default)."""
    raw = (project.settings or {}).get("workflow") or {}
    levels = tuple(raw.get("review_levels") or DEFAULT_REVIEW_LEVELS)
    return WorkflowConfig(review_levels=levels, lease_minutes=float(raw.get("lease_minutes", DEFAULT_LEASE_MINUTES)))


def validate_settings(value: Any) -> dict[str, Any]:
    """Check a `workflow` settings object: review level names, lease minutes; other sections must be objects."""
    if not isinstance(value, dict):
        raise InvalidInput("workflow settings must be an object")
    unknown = sorted(set(value) - set(_SETTINGS_KEYS))
    if unknown:
        raise InvalidInput(f"unknown workflow settings {unknown}; known: {list(_SETTINGS_KEYS)}")
    out: dict[str, Any] = {}
    if "review_levels" in value:
        levels = value["review_levels"]
        if (
            not isinstance(levels, list)
            or not 1 <= len(levels) <= 5
            or not all(isinstance(n, str) and 0 < len(n.strip()) <= 40 for n in levels)
        ):
            raise InvalidInput('workflow.review_levels must list 1 to 5 level names, e.g. ["junior", "senior"]')
        names = [n.strip() for n in levels]
        if len(set(names)) != len(names):
            raise InvalidInput("workflow.review_levels names must be unique")
        out["review_levels"] = names
    if "lease_minutes" in value:
        minutes = value["lease_minutes"]
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not 1 <= minutes <= 1440:
            raise InvalidInput("workflow.lease_minutes must be a number of minutes in 1..1440")
        out["lease_minutes"] = minutes
    for key in ("multi_reader", "qa", "plausible_volume_ml"):
        if key in value:
            if not isinstance(value[key], dict):
                raise InvalidInput(f"workflow.{key} must be an object")
            out[key] = value[key]
    return out


def merge_settings(current: dict[str, Any] | None, changes: dict[str, Any]) -> dict[str, Any]:
    """The workflow settings after a PATCH: each given section replaces the stored one."""
    return {**(current or {}), **changes}


# --- tasks ---------------------------------------------------------------------------------------------------


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
            updated_at=_now(),
        )
        db.add(task)
        db.flush()
    return task


def _locked_task(db: Session, scan: Scan) -> ScanTask:
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
    return _aware(task.lease_expires_at) > (now or _now())


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


def _lease_held_error(db: Session, task: ScanTask) -> LeaseHeld:
    holder = db.get(User, task.lease_user_id) if task.lease_user_id else None
    expires = _aware(task.lease_expires_at).isoformat() if task.lease_expires_at else None
    return LeaseHeld(
        f"{_display(holder) or 'another user'} is editing scan {task.scan_id} (lease until {expires}); "
        "wait for them to finish or ask a lead to release the lease",
        holder_user_id=task.lease_user_id,
        holder=_display(holder),
        expires_at=expires,
    )


def _approved_error(task: ScanTask) -> ScanApproved:
    return ScanApproved(
        f"scan {task.scan_id} is approved (version {task.approved_version_id}) and read-only; "
        "a lead must reopen it before its labels can change",
        approved_version_id=task.approved_version_id,
    )


def _in_open_reader_set(db: Session, scan_id: int, user_id: int) -> bool:
    found = db.scalar(
        select(ReaderSetMember.id)
        .join(ReaderSet, ReaderSet.id == ReaderSetMember.reader_set_id)
        .where(ReaderSet.scan_id == scan_id, ReaderSet.status == "open", ReaderSetMember.user_id == user_id)
        .limit(1)
    )
    return found is not None


def check_can_save(db: Session, scan: Scan, user_id: int | None, *, kind: str, branch: bool) -> None:
    """Refuse a label save the workflow forbids: approved scans (409 scan_approved), others' leases (409 lease_held).

    A member of an open reader set of the scan may always save a branch (readers work blinded, off the head).
    Model versions and saves without a user (imports) ignore leases but not approval.
    """
    task = ensure_task(db, scan)
    if branch and user_id is not None and _in_open_reader_set(db, scan.id, user_id):
        return
    if task.state == "approved":
        raise _approved_error(task)
    if kind == "model" or user_id is None:
        return
    if lease_live(task) and task.lease_user_id != user_id:
        raise _lease_held_error(db, task)


def _bump_saves(db: Session, scan: Scan, user_id: int, *, seconds: float = 0.0, saves: int = 0) -> None:
    """Add editing seconds and saves to today's activity row of (user, scan), race-free (upsert)."""
    values = {
        "project_id": scan.project_id,
        "scan_id": scan.id,
        "user_id": user_id,
        "day": _now().date(),
        "active_seconds": seconds,
        "saves": saves,
    }
    table = ActivityDaily.__table__
    assert isinstance(table, Table)
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(table).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=["user_id", "scan_id", "day"],
        set_={
            "active_seconds": table.c.active_seconds + seconds,
            "saves": table.c.saves + saves,
        },
    )
    db.execute(statement)


def on_version_created(db: Session, scan: Scan, version: LabelVersion) -> None:
    """Move the task after a label save: a model version pre-annotates a new scan, a first human save starts it."""
    task = _locked_task(db, scan)
    now = _now()
    if version.kind == "model" and not version.is_branch and task.state == "new":
        _apply(db, task, "pre_annotate", "pre_annotated", actor_user_id=None, version_id=version.id, now=now)
    author = version.author_user_id
    if version.kind == "human" and author is not None:
        if not version.is_branch and task.state in _FROM_STATES["start"]:
            # An implied start records who works on the scan; leases stay explicit (start, lease, next-task).
            if task.assignee_user_id is None:
                task.assignee_user_id = author
            _apply(db, task, "start", "annotating", actor_user_id=author, version_id=version.id, now=now)
        if task.lease_user_id == author and lease_live(task, now):
            _grant_lease(task, author, config_of(_project(db, task.project_id)), now)
        _bump_saves(db, scan, author, saves=1)
    task.updated_at = now
    db.flush()


def update_priority(db: Session, scan_id: int, priority: float) -> None:
    """Store the scan's review priority (its highest structure attention priority) on its task."""
    scan = db.get(Scan, scan_id)
    if scan is None:
        raise NotFound(f"scan {scan_id} not found")
    task = ensure_task(db, scan)
    task.priority = float(priority)
    db.flush()


def scan_of(db: Session, scan_id: int) -> Scan:
    """A scan by id."""
    scan = db.get(Scan, scan_id)
    if scan is None:
        raise NotFound(f"scan {scan_id} not found")
    return scan


def _project(db: Session, project_id: int) -> Project:
    project = db.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} not found")
    return project


def _grant_lease(task: ScanTask, user_id: int, config: WorkflowConfig, now: datetime) -> None:
    task.lease_user_id = user_id
    task.lease_heartbeat_at = now
    task.lease_expires_at = now + timedelta(minutes=config.lease_minutes)


def _clear_lease(task: ScanTask) -> None:
    task.lease_user_id = None
    task.lease_expires_at = None
    task.lease_heartbeat_at = None


def _apply(
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


# --- who may do what -------------------------------------------------------------------------------------------


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
        """Leads and admins steer the workflow."""
        return self.can(LEAD_PERMISSION)


def _refusal(
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
    if task.state not in _FROM_STATES[action]:
        return InvalidTransition(
            f"cannot {action.replace('_', ' ')} a task in state {task.state!r}",
            state=task.state,
            allowed_from=list(_FROM_STATES[action]),
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
        since = _aware(task.submitted_at) if task.submitted_at else None
        if reviewer is not None and level < task.review_level and (since is None or _aware(created) >= since):
            out.setdefault(int(scan_id), set()).add(int(reviewer))
    return out


def allowed_actions(
    task: ScanTask, caller: Caller, *, now: datetime, prior: Collection[int] = (), config: WorkflowConfig
) -> list[str]:
    """Everything the caller may do to the task now: transitions plus edit, lease, release_lease, assign, comment."""
    out = [a for a in ACTIONS if _refusal(task, caller, a, now=now, prior_approvers=prior) is None]
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


# --- transitions -----------------------------------------------------------------------------------------------


def _head_version(db: Session, scan: Scan, version_id: int | None, what: str) -> int:
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
    task = _locked_task(db, scan)
    now = _now()
    caller = Caller(user.id, role)
    refusal = _refusal(task, caller, action, now=now)
    if refusal is not None:
        if isinstance(refusal, LeaseHeld):
            raise _lease_held_error(db, task)
        raise refusal
    project = _project(db, task.project_id)
    config = config_of(project)
    details: dict[str, Any] = {"message": message[:2000]} if message else {}
    if action == "start":
        if task.assignee_user_id is None:
            task.assignee_user_id = user.id
        _grant_lease(task, user.id, config, now)
        _apply(db, task, "start", "annotating", actor_user_id=user.id, now=now, details=details)
    elif action == "submit":
        submitted = _head_version(db, scan, version_id, "submit")
        task.submitted_version_id = submitted
        task.submitted_at = now
        task.submitted_by_user_id = user.id
        task.review_level = 0
        _clear_lease(task)
        _apply(db, task, "submit", "submitted", actor_user_id=user.id, version_id=submitted, now=now, details=details)
    elif action == "start_review":
        task.review_level = 1
        task.reviewer_user_id = task.reviewer_user_id or user.id
        _grant_lease(task, user.id, config, now)
        _apply(
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
        _clear_lease(task)
        _apply(db, task, "reopen", "annotating", actor_user_id=user.id, now=now, details=details)
    elif action == "adjudicate":
        adjudicate(db, scan, actor_user_id=user.id, reason=message)
    elif action == "resolve":
        task.review_level = 1
        task.reviewer_user_id = None
        _clear_lease(task)
        _apply(db, task, "resolve", "in_review", actor_user_id=user.id, now=now, details=details)
    return task


def list_transitions(db: Session, scan: Scan) -> list[TaskTransition]:
    """The scan's task history, oldest first."""
    query = select(TaskTransition).where(TaskTransition.scan_id == scan.id)
    return list(db.scalars(query.order_by(TaskTransition.at, TaskTransition.id)))


def adjudicate(db: Session, scan: Scan, *, actor_user_id: int | None, reason: str = "") -> ScanTask:
    """Send the scan's task to adjudication (readers disagree, or a lead asks); no-op when already there."""
    task = _locked_task(db, scan)
    if task.state == "adjudication":
        return task
    task.review_level = 0
    _clear_lease(task)
    _apply(
        db,
        task,
        "adjudicate",
        "adjudication",
        actor_user_id=actor_user_id,
        now=_now(),
        details={"reason": reason[:2000]} if reason else None,
    )
    return task


# --- leases ----------------------------------------------------------------------------------------------------


def acquire_lease(db: Session, scan: Scan, user: User, role: str) -> ScanTask:
    """Take or renew (heartbeat) the scan's edit lease; 409 lease_held while someone else holds a live one."""
    task = ensure_task(db, scan)
    caller = Caller(user.id, role)
    if not caller.can("write_labels"):
        raise PermissionDenied(f"role {role!r} may not edit labels, so it cannot take an edit lease")
    if task.state == "approved":
        raise _approved_error(task)
    config = config_of(_project(db, task.project_id))
    now = _now()
    claimed = _claim(db, scan.id, user.id, config, now)
    db.refresh(task)
    if not claimed:
        raise _lease_held_error(db, task)
    return task


def _lease_free(user_id: int, now: datetime) -> ColumnElement[bool]:
    return or_(
        ScanTask.lease_user_id.is_(None),
        ScanTask.lease_user_id == user_id,
        ScanTask.lease_expires_at.is_(None),
        ScanTask.lease_expires_at <= now,
    )


def _claim(
    db: Session, scan_id: int, user_id: int, config: WorkflowConfig, now: datetime, *extra: ColumnElement[bool]
) -> bool:
    """Conditional UPDATE: the lease becomes the user's only if it is free (or theirs) at this instant."""
    result = db.execute(
        update(ScanTask)
        .where(ScanTask.scan_id == scan_id, _lease_free(user_id, now), *extra)
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
    task = _locked_task(db, scan)
    if task.lease_user_id is None:
        return task
    caller = Caller(user.id, role)
    holder = task.lease_user_id
    if holder != user.id and not caller.is_lead:
        raise PermissionDenied("only the lease holder or a lead may release this lease")
    _clear_lease(task)
    task.updated_at = _now()
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


# --- next task and assignment ------------------------------------------------------------------------------------


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
        now = _now()
        query = (
            select(ScanTask.scan_id)
            .where(*conditions, _lease_free(user.id, now))
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
            if _claim(db, scan_id, user.id, config, now, *conditions):
                task = db.get(ScanTask, scan_id)
                assert task is not None
                db.refresh(task)
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
    now = _now()
    values: dict[str, Any] = {"updated_at": now}
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


# --- reviews and comments ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommentSpec:
    """A comment to pin on a scan: text, and optionally a version, structure, slice and/or voxel."""

    text: str
    version_id: int | None = None
    structure: str | None = None
    slice_axis: int | None = None
    slice_index: int | None = None
    voxel: tuple[int, int, int] | None = None


def _comment_row(db: Session, scan: Scan, author_id: int, spec: CommentSpec) -> ReviewComment:
    """A checked, not yet added comment (so a review with a bad comment writes nothing)."""
    text = spec.text.strip()
    if not text:
        raise InvalidInput("a comment needs text")
    if len(text) > 10000:
        raise InvalidInput("a comment may hold at most 10000 characters")
    if spec.version_id is not None:
        version = db.get(LabelVersion, spec.version_id)
        if version is None or version.scan_id != scan.id:
            raise InvalidInput(f"version {spec.version_id} is not a version of scan {scan.id}")
    structure_id = None
    if spec.structure is not None:
        structure_id = projects.find_structure(projects.structures_of(db, scan.project_id), spec.structure).id
    shape = [int(s) for s in scan.shape]
    if (spec.slice_axis is None) != (spec.slice_index is None):
        raise InvalidInput("a slice location needs both slice_axis and slice_index")
    if spec.slice_axis is not None and spec.slice_index is not None:
        if spec.slice_axis not in (0, 1, 2):
            raise InvalidInput("slice_axis must be 0, 1 or 2")
        if not 0 <= spec.slice_index < shape[spec.slice_axis]:
            raise InvalidInput(
                f"slice_index {spec.slice_index} is outside 0..{shape[spec.slice_axis] - 1} on axis {spec.slice_axis}"
            )
    if spec.voxel is not None and (
        len(spec.voxel) != 3 or not all(0 <= v < n for v, n in zip(spec.voxel, shape, strict=True))
    ):
        raise InvalidInput(f"voxel {list(spec.voxel)} is outside the scan of shape {shape}")
    comment = ReviewComment(
        scan_id=scan.id,
        version_id=spec.version_id,
        author_user_id=author_id,
        structure_id=structure_id,
        slice_axis=spec.slice_axis,
        slice_index=spec.slice_index,
        voxel=list(spec.voxel) if spec.voxel is not None else None,
        text=text,
        resolved=False,
        created_at=_now(),
    )
    return comment


def add_comment(db: Session, scan: Scan, user: User, spec: CommentSpec) -> ReviewComment:
    """Pin a comment on a scan (and version, structure, slice or voxel)."""
    comment = _comment_row(db, scan, user.id, spec)
    db.add(comment)
    db.flush()
    audit.record(
        db,
        actor_user_id=user.id,
        action="comment.create",
        entity_type="review_comment",
        entity_id=comment.id,
        project_id=scan.project_id,
        scan_id=scan.id,
        details={"version_id": spec.version_id, "structure": spec.structure},
    )
    return comment


def submit_review(
    db: Session,
    scan: Scan,
    user: User,
    role: str,
    *,
    version_id: int,
    decision: str,
    message: str = "",
    comments: Sequence[CommentSpec] = (),
) -> Review:
    """Approve (next level, or approved at the last) or request changes on the head version at the current level."""
    if decision not in ("approve", "request_changes"):
        raise InvalidInput("decision must be 'approve' or 'request_changes'")
    if decision == "request_changes" and not message.strip():
        raise InvalidInput("requesting changes needs a message saying what to change")
    task = _locked_task(db, scan)
    now = _now()
    caller = Caller(user.id, role)
    refusal = _refusal(task, caller, decision, now=now, prior_approvers=prior_approvers(db, [task]).get(scan.id, ()))
    if refusal is not None:
        if isinstance(refusal, LeaseHeld):
            raise _lease_held_error(db, task)
        raise refusal
    version = _head_version(db, scan, version_id, "approve" if decision == "approve" else "review")
    config = config_of(_project(db, task.project_id))
    level = max(1, task.review_level)
    rows = [
        _comment_row(db, scan, user.id, dataclasses.replace(spec, version_id=spec.version_id or version))
        for spec in comments
    ]
    review = Review(
        project_id=task.project_id,
        scan_id=scan.id,
        version_id=version,
        reviewer_user_id=user.id,
        review_level=level,
        decision=decision,
        message=message[:4000],
        created_at=now,
    )
    db.add(review)
    db.flush()
    for row in rows:
        row.review_id = review.id
        db.add(row)
    level_name = config.review_levels[min(level, len(config.review_levels)) - 1]
    details = {"review_id": review.id, "level_name": level_name, "message": message[:2000]}
    _clear_lease(task)
    if decision == "request_changes":
        task.review_level = 0
        _apply(
            db,
            task,
            "request_changes",
            "changes_requested",
            actor_user_id=user.id,
            version_id=version,
            now=now,
            details=details,
        )
    elif level < len(config.review_levels):
        task.review_level = level + 1
        task.reviewer_user_id = None
        _apply(db, task, "approve", "in_review", actor_user_id=user.id, version_id=version, now=now, details=details)
    else:
        task.approved_version_id = version
        task.approved_at = now
        task.review_level = 0
        _apply(db, task, "approve", "approved", actor_user_id=user.id, version_id=version, now=now, details=details)
    return review


def list_reviews(db: Session, scan: Scan) -> list[Review]:
    """The scan's reviews, oldest first."""
    return list(db.scalars(select(Review).where(Review.scan_id == scan.id).order_by(Review.created_at, Review.id)))


def list_comments(db: Session, scan: Scan, *, review_ids: Collection[int] | None = None) -> list[ReviewComment]:
    """The scan's comments (optionally only those of some reviews), oldest first."""
    query = select(ReviewComment).where(ReviewComment.scan_id == scan.id)
    if review_ids is not None:
        query = query.where(ReviewComment.review_id.in_(list(review_ids)))
    return list(db.scalars(query.order_by(ReviewComment.created_at, ReviewComment.id)))


def get_comment(db: Session, comment_id: int) -> tuple[ReviewComment, Scan]:
    """A comment and its scan."""
    comment = db.get(ReviewComment, comment_id)
    if comment is None:
        raise NotFound(f"comment {comment_id} not found")
    scan = db.get(Scan, comment.scan_id)
    assert scan is not None
    return comment, scan


def set_comment_resolved(db: Session, comment: ReviewComment, user: User, resolved: bool) -> ReviewComment:
    """Mark a comment resolved (or open again)."""
    comment.resolved = resolved
    scan = db.get(Scan, comment.scan_id)
    audit.record(
        db,
        actor_user_id=user.id,
        action="comment.resolve" if resolved else "comment.reopen",
        entity_type="review_comment",
        entity_id=comment.id,
        project_id=scan.project_id if scan else None,
        scan_id=comment.scan_id,
    )
    db.flush()
    return comment


def structure_names(db: Session, project_id: int) -> dict[int, str]:
    """Structure names of a project by id."""
    return {s.id: s.name for s in projects.structures_of(db, project_id)}


# --- editing time -------------------------------------------------------------------------------------------------


def record_activity(db: Session, scan: Scan, user: User, seconds: float) -> ScanTask:
    """Add reported active editing seconds to the task and to the caller's activity of the day."""
    if not 0 < seconds <= MAX_ACTIVITY_SECONDS:
        raise InvalidInput(f"active_seconds must be in (0, {MAX_ACTIVITY_SECONDS:g}]")
    task = ensure_task(db, scan)
    db.execute(
        update(ScanTask)
        .where(ScanTask.scan_id == scan.id)
        .values(active_seconds=ScanTask.active_seconds + seconds)
        .execution_options(synchronize_session=False)
    )
    _bump_saves(db, scan, user.id, seconds=seconds)
    db.flush()
    db.refresh(task)
    return task


def activity_of(db: Session, scan_id: int, user_id: int) -> list[ActivityDaily]:
    """A person's daily activity rows on a scan."""
    return list(
        db.scalars(
            select(ActivityDaily)
            .where(ActivityDaily.scan_id == scan_id, ActivityDaily.user_id == user_id)
            .order_by(ActivityDaily.day)
        )
    )


# --- worklist -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorklistFilter:
    """Worklist filters: states, site, phase, tumour flag, assignee ('me', 'none' or a user id), case id prefix."""

    states: tuple[str, ...] = ()
    site: str | None = None
    phase: str | None = None
    tumor: bool | None = None
    assignee: str | None = None
    q: str | None = None


@dataclass
class TaskRow:
    """A task with the scan columns the worklist shows."""

    task: ScanTask
    case_id: str
    site: str | None
    phase: str | None
    tumor: bool | None
    head_version_id: int | None


@dataclass
class TaskContext:
    """What describing tasks for one caller needs, loaded in batches: names, config, prior approvers."""

    caller: Caller
    config: WorkflowConfig
    names: dict[int, str] = field(default_factory=dict)
    prior: dict[int, set[int]] = field(default_factory=dict)
    now: datetime = field(default_factory=_now)

    def actions(self, task: ScanTask) -> list[str]:
        """The caller's allowed actions on a task."""
        return allowed_actions(
            task, self.caller, now=self.now, prior=self.prior.get(task.scan_id, set()), config=self.config
        )


def parse_filter(
    *,
    state: str | None,
    site: str | None,
    phase: str | None,
    tumor: bool | None,
    assignee: str | None,
    q: str | None,
) -> WorklistFilter:
    """Validate raw worklist query parameters."""
    states = tuple(s.strip() for s in (state or "").split(",") if s.strip())
    unknown = [s for s in states if s not in TASK_STATES]
    if unknown:
        raise InvalidInput(f"unknown states {unknown}; use {list(TASK_STATES)}")
    if assignee is not None and assignee not in ("me", "none") and not assignee.isdigit():
        raise InvalidInput("assignee must be 'me', 'none' or a user id")
    return WorklistFilter(states=states, site=site, phase=phase, tumor=tumor, assignee=assignee, q=q)


def _worklist_query(project_id: int, user_id: int, flt: WorklistFilter) -> AnySelect:
    query: AnySelect = (
        select(ScanTask, Scan.case_id, Scan.site, Scan.phase, Scan.tumor, Scan.head_version_id)
        .join(Scan, Scan.id == ScanTask.scan_id)
        # Both sides name the project, so the (project, case id) unique index on scans can serve the case order.
        .where(ScanTask.project_id == project_id, Scan.project_id == project_id)
    )
    return _apply_filter(query, user_id, flt)


def _apply_filter(query: AnySelect, user_id: int, flt: WorklistFilter) -> AnySelect:
    if flt.states:
        query = query.where(ScanTask.state.in_(flt.states))
    if flt.site:
        query = query.where(Scan.site == flt.site)
    if flt.phase:
        query = query.where(Scan.phase == flt.phase)
    if flt.tumor is not None:
        query = query.where(Scan.tumor == flt.tumor)
    if flt.assignee == "me":
        query = query.where(or_(ScanTask.assignee_user_id == user_id, ScanTask.reviewer_user_id == user_id))
    elif flt.assignee == "none":
        query = query.where(ScanTask.assignee_user_id.is_(None))
    elif flt.assignee is not None:
        query = query.where(ScanTask.assignee_user_id == int(flt.assignee))
    if flt.q:
        escaped = flt.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Scan.case_id.like(f"{escaped}%", escape="\\"))
    return query


def encode_cursor(sort: str, row: TaskRow) -> str:
    """An opaque token for the page after ``row`` in the given order (the sort keys of the last row)."""
    key: list[Any]
    if sort == "priority":
        key = [row.task.priority, row.task.scan_id]
    elif sort == "updated":
        key = [_aware(row.task.updated_at).isoformat(), row.task.scan_id]
    else:
        key = [row.case_id]
    raw = json.dumps({"sort": sort, "key": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str) -> list[Any]:
    """The sort keys of a cursor; InvalidInput if it is damaged or was made for another order."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        key = list(data["key"])
        made_for = str(data["sort"])
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidInput("the worklist cursor is not one this server issued") from exc
    if made_for != sort:
        raise InvalidInput(f"the cursor pages the {made_for!r} order; ask with sort={made_for} or without it")
    kinds = {"priority": (float | int, int), "updated": (str, int), "case": (str,)}[sort]
    if len(key) != len(kinds) or not all(
        isinstance(value, kind) and not isinstance(value, bool) for value, kind in zip(key, kinds, strict=True)
    ):
        raise InvalidInput("the worklist cursor is not one this server issued")
    if sort == "updated":
        try:
            key[0] = _aware(datetime.fromisoformat(key[0]))
        except ValueError as exc:
            raise InvalidInput("the worklist cursor is not one this server issued") from exc
    return key


def _after(sort: str, key: list[Any]) -> Any:
    """Rows strictly after the cursor's row in the order (keyset paging: an index seek, not an OFFSET scan)."""
    if sort == "priority":
        priority, scan_id = float(key[0]), int(key[1])
        return or_(ScanTask.priority < priority, and_(ScanTask.priority == priority, ScanTask.scan_id > scan_id))
    if sort == "updated":
        moment, scan_id = key[0], int(key[1])
        return or_(ScanTask.updated_at < moment, and_(ScanTask.updated_at == moment, ScanTask.scan_id < scan_id))
    return Scan.case_id > str(key[0])


def worklist(
    db: Session,
    project: Project,
    user: User,
    flt: WorklistFilter,
    *,
    sort: str,
    offset: int,
    limit: int,
    after: str | None = None,
) -> tuple[list[TaskRow], int]:
    """One page of a project's tasks with the scan columns, and the total matching the filter.

    ``after`` (a cursor from ``encode_cursor``) starts the page after that row instead of at ``offset``: deep
    pages then cost what the first does, and rows inserted or moved meanwhile neither repeat nor go missing.
    """
    if sort not in WORKLIST_SORTS:
        raise InvalidInput(f"sort must be one of {list(WORKLIST_SORTS)}")
    order: tuple[Any, ...]
    if sort == "priority":
        # Ties in import order: the (project, priority desc, scan id) index serves it without a sort.
        order = (ScanTask.priority.desc(), ScanTask.scan_id)
    elif sort == "updated":
        order = (ScanTask.updated_at.desc(), ScanTask.scan_id.desc())
    else:
        order = (Scan.case_id,)  # unique within a project
    query = _worklist_query(project.id, user.id, flt)
    if after is not None:
        query = query.where(_after(sort, _decode_cursor(after, sort)))
        offset = 0
    rows = db.execute(query.order_by(*order).offset(offset).limit(limit)).all()
    needs_scans = bool(flt.site or flt.phase or flt.tumor is not None or flt.q)
    count = select(func.count()).select_from(ScanTask).where(ScanTask.project_id == project.id)
    if needs_scans:
        count = count.join(Scan, Scan.id == ScanTask.scan_id)
    total = db.scalar(_apply_filter(count, user.id, flt)) or 0
    return [TaskRow(t, c, s, p, tu, h) for t, c, s, p, tu, h in rows], int(total)


def task_row(db: Session, scan: Scan) -> TaskRow:
    """The task of one scan with its scan columns."""
    task = ensure_task(db, scan)
    return TaskRow(task, scan.case_id, scan.site, scan.phase, scan.tumor, scan.head_version_id)


def context_for(db: Session, project: Project, user: User, role: str, rows: Sequence[TaskRow]) -> TaskContext:
    """Load what describing these tasks to the caller needs, in two queries at most."""
    tasks = [r.task for r in rows]
    ids: set[int | None] = set()
    for task in tasks:
        ids.update((task.assignee_user_id, task.reviewer_user_id, task.lease_user_id))
    return TaskContext(
        caller=Caller(user.id, role),
        config=config_of(project),
        names=usernames(db, ids),
        prior=prior_approvers(db, tasks),
    )
