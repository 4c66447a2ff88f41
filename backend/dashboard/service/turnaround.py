"""Turnaround: submission to first review decision, and review-cycle start to approval, per ISO week.

On PostgreSQL each decision's durations are computed once, by trigger, in the transaction that records the
transition (`dashboard_decisions`); a request reads the window's rows through the `(project_id, decided_at)`
index. Each process also remembers the rows it read per window and, when the window's count, newest id and
revision sum (one index-only probe) move on, asks only for the decisions after the newest it holds. Elsewhere
(SQLite) the same durations come from one ordered pass over the project's transitions.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, or_, select, text
from sqlalchemy.orm import Session

from backend.core.errors import InvalidInput
from backend.dashboard.service.common import EMPTY_DURATIONS, aware, duration_stats, engine_key, is_pg, now
from backend.dashboard.service.results import DurationStats, Turnaround, TurnaroundWeek
from backend.models import Project, TaskTransition
from backend.models.dashboard import DashboardDecision

DECISION_ACTIONS = ("approve", "request_changes")
_MEMO_SIZE = 256  # windows remembered per process before starting over


@dataclass(frozen=True)
class _Decision:
    """One decision's ISO week, durations (seconds, None when it has none) and the revision they were computed at."""

    week: date
    first_review_s: float | None
    approval_s: float | None
    revision: int


@dataclass(frozen=True)
class _Window:
    """The decisions of one window that a process has read, by transition id."""

    decisions: dict[int, _Decision]

    def marks(self) -> tuple[int, int | None, int]:
        """(count, newest id, revision sum), as the database's probe answers them."""
        if not self.decisions:
            return 0, None, 0
        return len(self.decisions), max(self.decisions), sum(d.revision for d in self.decisions.values())


_windows: dict[tuple[str, int, date], _Window] = {}
_windows_lock = threading.Lock()


def clear_memo() -> None:
    """Forget the decisions this process remembered (they are re-read from dashboard_decisions)."""
    with _windows_lock:
        _windows.clear()


_DECISIONS_SQL = text(
    """
    WITH decisions AS (
        SELECT transition_id AS decision_id, decided_at, first_review_s, approval_s, revision
        FROM dashboard_decisions
        WHERE project_id = :project_id AND decided_at >= :since AND transition_id > :after_id
    )
    SELECT decision_id, date_trunc('week', decided_at AT TIME ZONE 'UTC')::date AS week, first_review_s,
           approval_s, revision
    FROM decisions
    """
)


def _marks(db: Session, project_id: int, since_at: datetime) -> tuple[int, int | None, int]:
    """How many decisions the window holds, the newest one's id and the sum of their revisions (index-only)."""
    d = DashboardDecision
    count, newest, revisions = db.execute(
        select(func.count(), func.max(d.transition_id), func.coalesce(func.sum(d.revision), 0)).where(
            d.project_id == project_id, d.decided_at >= since_at
        )
    ).one()
    return int(count), None if newest is None else int(newest), int(revisions)


def _read(db: Session, project_id: int, since_at: datetime, after_id: int) -> dict[int, _Decision]:
    """The window's decisions with an id above `after_id`."""
    rows = db.execute(_DECISIONS_SQL, {"project_id": project_id, "since": since_at, "after_id": after_id})
    return {int(r.decision_id): _Decision(r.week, r.first_review_s, r.approval_s, int(r.revision)) for r in rows}


def _window(db: Session, project_id: int, since: date, since_at: datetime) -> _Window:
    """The window's decisions: remembered, topped up with the newer ones, or read afresh when anything else moved."""
    marks = _marks(db, project_id, since_at)
    key = (engine_key(db), project_id, since)
    with _windows_lock:
        window = _windows.get(key)
    if window is not None and window.marks() == marks:
        return window
    if window is not None and window.decisions:
        window = _Window({**window.decisions, **_read(db, project_id, since_at, max(window.decisions))})
    if window is None or window.marks() != marks:  # decisions went, or older ones were recomputed: from scratch
        window = _Window(_read(db, project_id, since_at, 0))
    with _windows_lock:
        if len(_windows) >= _MEMO_SIZE and key not in _windows:
            _windows.clear()
        _windows[key] = window
    return window


def _window_start(weeks: int) -> tuple[date, datetime]:
    """The Monday that starts a window of `weeks` ISO weeks ending this week, as a day and a UTC moment."""
    if not 1 <= weeks <= 104:
        raise InvalidInput("weeks must be between 1 and 104")
    today = now().date()
    since = today - timedelta(days=today.weekday()) - timedelta(weeks=weeks - 1)
    return since, datetime.combine(since, datetime.min.time(), tzinfo=UTC)


def turnaround_from_transitions(db: Session, project: Project, weeks: int = 12) -> Turnaround:
    """The turnaround computed from the transitions themselves in one ordered pass (any database; SQLite's path,
    and the reference the PostgreSQL aggregate must agree with)."""
    since, since_at = _window_start(weeks)
    first, approved = _pairs_from_transitions(db, project.id, since_at)
    return _from_pairs(project.id, since, first, approved)


def turnaround(db: Session, project: Project, weeks: int = 12) -> Turnaround:
    """Submission to first review decision, and review-cycle start to approval, over the window and per week."""
    since, since_at = _window_start(weeks)
    if not is_pg(db):
        return turnaround_from_transitions(db, project, weeks)
    grouped: dict[tuple[str, date | None], list[float]] = defaultdict(list)
    for decision in _window(db, project.id, since, since_at).decisions.values():
        for kind, seconds in (("first_review", decision.first_review_s), ("approval", decision.approval_s)):
            if seconds is not None:
                grouped[(kind, decision.week)].append(seconds)
                grouped[(kind, None)].append(seconds)
    return _from_stats(project.id, since, {k: duration_stats(v) for k, v in grouped.items()})


def _pairs_from_transitions(
    db: Session, project_id: int, since_at: datetime
) -> tuple[list[tuple[datetime, datetime]], list[tuple[datetime, datetime]]]:
    """(end, start) pairs of first reviews and approvals in the window, from one ordered pass (ties by id)."""
    events = db.execute(
        select(TaskTransition.scan_id, TaskTransition.action, TaskTransition.to_state, TaskTransition.at)
        .where(
            TaskTransition.project_id == project_id,
            or_(TaskTransition.action.in_(("submit", *DECISION_ACTIONS)), TaskTransition.to_state == "approved"),
        )
        .order_by(TaskTransition.scan_id, TaskTransition.at, TaskTransition.id)
    ).all()
    first_review: list[tuple[datetime, datetime]] = []
    approvals: list[tuple[datetime, datetime]] = []
    since = aware(since_at)
    scan: int | None = None
    last_action: str | None = None
    last_submit: datetime | None = None
    cycle_start: datetime | None = None
    for scan_id, action, to_state, at in events:
        at = aware(at)
        if scan_id != scan:
            scan, last_action, last_submit, cycle_start = scan_id, None, None, None
        if action in DECISION_ACTIONS and at >= since and last_action == "submit" and last_submit is not None:
            first_review.append((at, last_submit))
        if to_state == "approved":
            if action == "approve" and at >= since and cycle_start is not None:
                approvals.append((at, cycle_start))
            cycle_start = None
        if action in ("submit", *DECISION_ACTIONS):
            last_action = action
        if action == "submit":
            last_submit = at
            cycle_start = cycle_start or at
    return first_review, approvals


def _from_pairs(
    project_id: int,
    since: date,
    first_review: Sequence[tuple[datetime, datetime]],
    approvals: Sequence[tuple[datetime, datetime]],
) -> Turnaround:
    """The turnaround answer from (end, start) pairs."""
    stats: dict[tuple[str, date | None], DurationStats] = {}
    for kind, rows in (("first_review", first_review), ("approval", approvals)):
        everything: list[float] = []
        weekly: dict[date, list[float]] = defaultdict(list)
        for end, start in rows:
            seconds = (aware(end) - aware(start)).total_seconds()
            everything.append(seconds)
            day = aware(end).astimezone(UTC).date()
            weekly[day - timedelta(days=day.weekday())].append(seconds)
        if everything:
            stats[(kind, None)] = duration_stats(everything)
        for week, values in weekly.items():
            stats[(kind, week)] = duration_stats(values)
    return _from_stats(project_id, since, stats)


def _from_stats(project_id: int, since: date, stats: dict[tuple[str, date | None], DurationStats]) -> Turnaround:
    """The turnaround answer from statistics keyed by (kind, week) and (kind, None) for the whole window."""
    weeks = sorted({week for _, week in stats if week is not None})
    return Turnaround(
        project_id=project_id,
        since=since,
        first_review=stats.get(("first_review", None), EMPTY_DURATIONS),
        approval=stats.get(("approval", None), EMPTY_DURATIONS),
        weeks=[
            TurnaroundWeek(
                week=w,
                first_review=stats.get(("first_review", w), EMPTY_DURATIONS),
                approval=stats.get(("approval", w), EMPTY_DURATIONS),
            )
            for w in weeks
        ],
    )
