"""People: throughput per person per UTC day and editing time per scan.

Throughput reads the daily counters (`activity_daily`, one row per person, scan and day) and the windowed
`task_transitions` / `reviews` through their `(project_id, at|created_at)` indexes; editing time the tasks'
`active_seconds` and the daily counters.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime

from sqlalchemy import and_, case, func, literal, select, union_all
from sqlalchemy.orm import Session

from backend.dashboard.service.common import (
    EMPTY_DURATIONS,
    as_date,
    grouped_durations,
    is_pg,
    now,
    opt_float,
    utc_day,
    window_start,
)
from backend.dashboard.service.results import (
    DurationStats,
    EditingTime,
    PersonDay,
    PersonEditing,
    PersonThroughput,
    Throughput,
)
from backend.models import ActivityDaily, Membership, Project, Review, ScanTask, TaskTransition, User

_COUNTERS = ("versions_saved", "submissions", "reviews", "approvals", "changes_requested", "active_seconds")


def _people(db: Session, project_id: int, user_ids: Iterable[int]) -> dict[int, tuple[str, str | None]]:
    """user id -> (display name or e-mail, project role or None)."""
    ids = sorted(set(user_ids))
    if not ids:
        return {}
    rows = db.execute(
        select(User.id, User.display_name, User.email, Membership.role)
        .outerjoin(Membership, and_(Membership.user_id == User.id, Membership.project_id == project_id))
        .where(User.id.in_(ids))
    ).all()
    return {int(i): (name or email, role) for i, name, email, role in rows}


def _person_day(day: date, cell: dict[str, float]) -> PersonDay:
    return PersonDay(
        day=day,
        versions_saved=int(cell.get("versions_saved", 0)),
        submissions=int(cell.get("submissions", 0)),
        reviews=int(cell.get("reviews", 0)),
        approvals=int(cell.get("approvals", 0)),
        changes_requested=int(cell.get("changes_requested", 0)),
        active_seconds=float(cell.get("active_seconds", 0.0)),
    )


def throughput(db: Session, project: Project, days: int = 30) -> Throughput:
    """Per person per UTC day over the last `days` days: saves, submissions, reviews, approvals, active time."""
    since = window_start(days, 366, "days")
    since_at = datetime.combine(since, datetime.min.time(), tzinfo=UTC)
    cells: dict[tuple[int, date], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for user_id, day, saves, seconds in db.execute(
        select(
            ActivityDaily.user_id,
            ActivityDaily.day,
            func.sum(ActivityDaily.saves),
            func.sum(ActivityDaily.active_seconds),
        )
        .where(ActivityDaily.project_id == project.id, ActivityDaily.day >= since)
        .group_by(ActivityDaily.user_id, ActivityDaily.day)
    ):
        cell = cells[(int(user_id), as_date(day))]
        cell["versions_saved"] += float(saves or 0)
        cell["active_seconds"] += float(seconds or 0.0)
    t_day = utc_day(db, TaskTransition.at)
    for user_id, day, n in db.execute(
        select(TaskTransition.actor_user_id, t_day, func.count())
        .where(
            TaskTransition.project_id == project.id,
            TaskTransition.at >= since_at,
            TaskTransition.action == "submit",
            TaskTransition.actor_user_id.is_not(None),
        )
        .group_by(TaskTransition.actor_user_id, t_day)
    ):
        cells[(int(user_id), as_date(day))]["submissions"] += int(n)
    r_day = utc_day(db, Review.created_at)
    approve = case((Review.decision == "approve", 1), else_=0)
    changes = case((Review.decision == "request_changes", 1), else_=0)
    for user_id, day, n, n_approve, n_changes in db.execute(
        select(Review.reviewer_user_id, r_day, func.count(), func.sum(approve), func.sum(changes))
        .where(Review.project_id == project.id, Review.created_at >= since_at, Review.reviewer_user_id.is_not(None))
        .group_by(Review.reviewer_user_id, r_day)
    ):
        cell = cells[(int(user_id), as_date(day))]
        cell["reviews"] += int(n)
        cell["approvals"] += int(n_approve or 0)
        cell["changes_requested"] += int(n_changes or 0)
    until = now().date()
    people = _people(db, project.id, (u for u, _ in cells))
    per_user: dict[int, list[tuple[date, dict[str, float]]]] = defaultdict(list)
    for (user_id, day), cell in sorted(cells.items(), key=lambda item: (item[0][0], item[0][1])):
        per_user[user_id].append((day, cell))
    out = []
    for user_id, person_days in per_user.items():
        totals = {name: sum(cell.get(name, 0.0) for _, cell in person_days) for name in _COUNTERS}
        name, role = people.get(user_id, (f"user {user_id}", None))
        out.append(
            PersonThroughput(
                user_id=user_id,
                name=name,
                role=role,
                days=[_person_day(day, cell) for day, cell in person_days],
                totals=_person_day(until, totals),
            )
        )
    out.sort(key=lambda p: (-p.totals.active_seconds, -p.totals.reviews, p.user_id))
    return Throughput(project_id=project.id, since=since, until=until, people=out)


def editing_time(db: Session, project: Project, days: int | None = None) -> EditingTime:
    """Active editing seconds per scan (median, p90) overall, over approved scans, and per person."""
    since = window_start(days, 3660, "days") if days is not None else None
    by_state = _scan_editing_stats(db, project.id)
    per_scan = (
        select(
            ActivityDaily.user_id.label("user_id"),
            ActivityDaily.scan_id,
            func.sum(ActivityDaily.active_seconds).label("seconds"),
        )
        .where(ActivityDaily.project_id == project.id, ActivityDaily.active_seconds > 0)
        .group_by(ActivityDaily.user_id, ActivityDaily.scan_id)
    )
    if since is not None:
        per_scan = per_scan.where(ActivityDaily.day >= since)
    people_stats = grouped_durations(db, per_scan)
    names = _people(db, project.id, people_stats)
    people = [
        PersonEditing(
            user_id=int(user_id),
            name=names.get(int(user_id), (f"user {user_id}", None))[0],
            scans=st.count,
            total_active_seconds=(st.mean_s or 0.0) * st.count,
            per_scan=st,
        )
        for user_id, st in people_stats.items()
    ]
    people.sort(key=lambda p: (-p.total_active_seconds, p.user_id))
    return EditingTime(
        project_id=project.id,
        since=since,
        overall=by_state.get("all", EMPTY_DURATIONS),
        approved=by_state.get("approved", EMPTY_DURATIONS),
        people=people,
    )


def _scan_editing_stats(db: Session, project_id: int) -> dict[str, DurationStats]:
    """Editing-time statistics over every scan with recorded time ("all") and over approved ones ("approved")."""
    v = ScanTask.active_seconds
    with_time = and_(ScanTask.project_id == project_id, v > 0)
    if not is_pg(db):
        both = union_all(
            select(literal("all").label("k"), v.label("v")).where(with_time),
            select(literal("approved").label("k"), v.label("v")).where(with_time, ScanTask.state == "approved"),
        ).subquery()
        return grouped_durations(db, select(both.c.k, both.c.v))
    approved = ScanTask.state == "approved"
    row = db.execute(  # one pass over the project's tasks; FILTER gives the approved subset
        select(
            func.count(),
            func.avg(v),
            func.percentile_cont(0.5).within_group(v),
            func.percentile_cont(0.9).within_group(v),
            func.count().filter(approved),
            func.avg(v).filter(approved),
            func.percentile_cont(0.5).within_group(v).filter(approved),
            func.percentile_cont(0.9).within_group(v).filter(approved),
        ).where(with_time)
    ).one()
    out: dict[str, DurationStats] = {}
    for key, (n, mean, median, p90) in (("all", row[0:4]), ("approved", row[4:8])):
        if n:
            out[key] = DurationStats(int(n), opt_float(mean), opt_float(median), opt_float(p90))
    return out
