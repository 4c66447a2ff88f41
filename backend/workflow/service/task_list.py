"""The worklist: a project's tasks filtered, sorted and paged by keyset cursor, and what describing them needs."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from backend.core.errors import InvalidInput
from backend.models import Project, Scan, ScanTask, User
from backend.models.workflow import TASK_STATES
from backend.workflow.service.permissions import Caller, allowed_actions, prior_approvers
from backend.workflow.service.settings import WorkflowConfig, config_of
from backend.workflow.service.tasks import aware, ensure_task, usernames, utcnow

WORKLIST_SORTS = ("priority", "updated", "case")
AnySelect = Select[*tuple[Any, ...]]
_BAD_CURSOR = "the worklist cursor is not one this server issued"


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
    now: datetime = field(default_factory=utcnow)

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
        key = [aware(row.task.updated_at).isoformat(), row.task.scan_id]
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
        raise InvalidInput(_BAD_CURSOR) from exc
    if made_for != sort:
        raise InvalidInput(f"the cursor pages the {made_for!r} order; ask with sort={made_for} or without it")
    kinds = {"priority": (float | int, int), "updated": (str, int), "case": (str,)}[sort]
    if len(key) != len(kinds) or not all(
        isinstance(value, kind) and not isinstance(value, bool) for value, kind in zip(key, kinds, strict=True)
    ):
        raise InvalidInput(_BAD_CURSOR)
    if sort == "updated":
        try:
            key[0] = aware(datetime.fromisoformat(key[0]))
        except ValueError as exc:
            raise InvalidInput(_BAD_CURSOR) from exc
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
