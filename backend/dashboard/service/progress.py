"""Progress: counts by workflow state over the project, per review level, per site and per contrast phase.

These aggregate `scan_tasks` (one row per scan, `(project_id, state)` index) joined to `scans` for site and phase:
tens of thousands of rows at PanTS scale, never the label versions, so they are computed on every request.
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import case, distinct, func, select
from sqlalchemy.orm import Session

from backend.core.errors import InvalidInput
from backend.dashboard.service.common import fraction, now, review_level_names, state_counts
from backend.dashboard.service.results import Groups, GroupStates, ReviewLevelCount, Summary
from backend.models import Project, QAFinding, Scan, ScanTask


def summary(db: Session, project: Project) -> Summary:
    """Counts by state and review level, assignment, live leases, open findings and editing time."""
    moment = now()
    live = case((ScanTask.lease_expires_at > moment, 1), else_=0)
    rows = db.execute(
        select(
            ScanTask.state,
            ScanTask.review_level,
            func.count(),
            func.count(ScanTask.assignee_user_id),
            func.coalesce(func.sum(live), 0),
            func.coalesce(func.sum(ScanTask.active_seconds), 0.0),
        )
        .where(ScanTask.project_id == project.id)
        .group_by(ScanTask.state, ScanTask.review_level)
    ).all()
    total = int(db.scalar(select(func.count()).select_from(Scan).where(Scan.project_id == project.id)) or 0)
    by_state: dict[str, int] = defaultdict(int)
    levels: dict[int, int] = defaultdict(int)
    assigned = leases = unassigned_open = tasks = 0
    seconds = 0.0
    for state, level, n, n_assigned, n_live, secs in rows:
        by_state[state] += int(n)
        tasks += int(n)
        assigned += int(n_assigned)
        leases += int(n_live)
        seconds += float(secs)
        if state == "in_review":
            levels[int(level)] += int(n)
        if state != "approved":
            unassigned_open += int(n) - int(n_assigned)
    # Scans without a task row yet (created before the workflow existed) count as new and unassigned.
    missing = max(0, total - tasks)
    by_state["new"] += missing
    unassigned_open += missing
    open_n, open_scans = db.execute(
        select(func.count(), func.count(distinct(QAFinding.scan_id))).where(
            QAFinding.project_id == project.id, QAFinding.status == "open"
        )
    ).one()
    names = review_level_names(project)
    return Summary(
        project_id=project.id,
        total_scans=total,
        by_state=state_counts(by_state),
        in_review_by_level=[
            ReviewLevelCount(level=lv, name=names[lv - 1] if 0 < lv <= len(names) else None, scans=n)
            for lv, n in sorted(levels.items())
        ],
        approved_fraction=fraction(by_state["approved"], total),
        assigned=assigned,
        unassigned_open=unassigned_open,
        live_leases=leases,
        open_findings=int(open_n),
        scans_with_open_findings=int(open_scans),
        active_seconds=seconds,
        generated_at=moment,
    )


def groups(db: Session, project: Project, group_by: str) -> Groups:
    """Counts by state per site or per contrast phase."""
    column = {"site": Scan.site, "phase": Scan.phase}.get(group_by)
    if column is None:
        raise InvalidInput("group_by must be 'site' or 'phase'")
    state = func.coalesce(ScanTask.state, "new")
    rows = db.execute(
        select(column, state, func.count())
        .select_from(Scan)
        .outerjoin(ScanTask, ScanTask.scan_id == Scan.id)
        .where(Scan.project_id == project.id)
        .group_by(column, state)
    ).all()
    counts: dict[str | None, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for key, st, n in rows:
        counts[key][st] += int(n)
    out = []
    for key, by_state in counts.items():
        total = sum(by_state.values())
        out.append(
            GroupStates(
                key=key,
                total=total,
                by_state=state_counts(by_state),
                approved_fraction=fraction(by_state.get("approved", 0), total),
            )
        )
    out.sort(key=lambda g: (-g.total, g.key is None, g.key or ""))
    return Groups(project_id=project.id, group_by=group_by, groups=out)
