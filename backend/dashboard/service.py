"""Lead dashboard: project-wide progress, throughput, turnaround, agreement, model rounds and QA, read-only.

Scale. The numbers must come back in well under 100 ms on a PanTS-sized project (36,390 scans, 28 structures,
three label versions each, i.e. about 3 million `label_version_structures` rows). Hence:

* progress counts aggregate `scan_tasks` (one row per scan, `(project_id, state)` index) joined to `scans`
  for site and phase — tens of thousands of rows, never the versions;
* throughput reads the daily counters (`activity_daily`, one row per person, scan and day) and the windowed
  `task_transitions` / `reviews` through their `(project_id, at|created_at)` indexes;
* turnaround starts from the decisions in the window (index-only on `task_transitions (project_id, action,
  at)`), looks back with index-only probes on `(scan_id, at, id)` and aggregates durations per week in SQL;
* the structures view is the only one that must touch the version rows: one row per scan and structure of the
  scans' head (or approved) versions, about a million rows: over half a second to aggregate in SQL, seconds on
  a busy machine. So each API process keeps, per (database, project, basis), an in-memory *volume table*: a
  float array with one row per scan and one column per structure (mL in the chosen version; NaN = missing or
  empty; 8 MB at PanTS scale), built once with one grouped query (one row per structure, with `array_agg` of
  scan ids and volumes, on PostgreSQL). It is then kept current incrementally: every head move creates a label
  version and every approval writes a task transition, so each request reads the newest version id and
  transition id (two primary-key look-ups) and, when either moved, re-reads only the scans of the versions or
  transitions added since (plus an overlap of the last `MARK_OVERLAP` ids for `LATE_COMMIT_S` seconds, since
  concurrent transactions commit out of id order). Count, mean and median are recomputed only for the
  structures whose column changed (about a millisecond each). A full rebuild happens on the first request,
  after `STRUCTURE_REBUILD_S` (which also catches deleted scans), when more than `MAX_INCREMENTAL_SCANS` scans
  changed at once, or on `fresh=True`. Open findings per structure are counted live on every request.

Percentiles are `percentile_cont` (linear interpolation) on PostgreSQL; on other databases (the embedded SQLite
default) the same statistics are computed in Python from the fetched values.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Date, Select, and_, case, cast, distinct, func, literal, or_, select, text, union_all
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from backend.core.errors import InvalidInput
from backend.dashboard import schemas
from backend.models import (
    ActivityDaily,
    LabelSchema,
    LabelVersion,
    LabelVersionStructure,
    Membership,
    Model,
    Project,
    QAFinding,
    ReaderSet,
    Review,
    Scan,
    ScanTask,
    Structure,
    TaskTransition,
    TrainingRound,
    User,
)
from backend.models.workflow import FINDING_STATUSES, READER_SET_STATUSES, TASK_STATES

STRUCTURE_REBUILD_S = 600.0  # a full re-read of the volume table at least this often (catches deletions)
LATE_COMMIT_S = 30.0  # after a change, keep re-reading recent ids this long (transactions commit out of order)
MARK_OVERLAP = 50  # recent version/transition ids re-read on every refresh for the same reason
MAX_INCREMENTAL_SCANS = 2000  # more changed scans than this: rebuild instead
DECISION_ACTIONS = ("approve", "request_changes")


def _now() -> datetime:
    return datetime.now(UTC)


def _is_pg(db: Session) -> bool:
    return db.get_bind().dialect.name == "postgresql"


def _state_counts(counts: dict[str, int]) -> schemas.StateCounts:
    return schemas.StateCounts(**{state: int(counts.get(state, 0)) for state in TASK_STATES})


def _fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th quantile (0..1) of sorted values, linearly interpolated (as percentile_cont)."""
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def duration_stats(values: Iterable[float]) -> schemas.DurationStats:
    """Count, mean, median and p90 of durations in seconds (nulls when there are none)."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return schemas.DurationStats(count=0, mean_s=None, median_s=None, p90_s=None)
    return schemas.DurationStats(
        count=len(ordered),
        mean_s=sum(ordered) / len(ordered),
        median_s=_percentile(ordered, 0.5),
        p90_s=_percentile(ordered, 0.9),
    )


@dataclass(frozen=True)
class _Stats:
    count: int
    mean: float | None
    median: float | None
    p90: float | None


def _grouped_stats(db: Session, source: Select[*tuple[Any, ...]]) -> dict[Any, _Stats]:
    """Statistics of the last column of `source` grouped by its first column (SQL percentiles on PostgreSQL)."""
    sub = source.subquery()
    columns = list(sub.c)
    key, value = columns[0], columns[-1]
    if _is_pg(db):
        rows = db.execute(
            select(
                key,
                func.count(value),
                func.avg(value),
                func.percentile_cont(0.5).within_group(value),
                func.percentile_cont(0.9).within_group(value),
            ).group_by(key)
        ).all()
        return {k: _Stats(int(n), _opt(mean), _opt(median), _opt(p90)) for k, n, mean, median, p90 in rows if n}
    values: dict[Any, list[float]] = defaultdict(list)
    for k, v in db.execute(select(key, value)).all():
        if v is not None:
            values[k].append(float(v))
    out: dict[Any, _Stats] = {}
    for k, vs in values.items():
        stats = duration_stats(vs)
        out[k] = _Stats(stats.count, stats.mean_s, stats.median_s, stats.p90_s)
    return out


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def _to_duration(stats: _Stats | None) -> schemas.DurationStats:
    if stats is None:
        return schemas.DurationStats(count=0, mean_s=None, median_s=None, p90_s=None)
    return schemas.DurationStats(count=stats.count, mean_s=stats.mean, median_s=stats.median, p90_s=stats.p90)


def _utc_day(db: Session, column: Any) -> ColumnElement[Any]:
    """The UTC calendar day of a timestamp column."""
    if _is_pg(db):
        return cast(func.timezone("UTC", column), Date)
    return func.date(column)


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _review_level_names(project: Project) -> list[str]:
    workflow = (project.settings or {}).get("workflow") or {}
    levels = workflow.get("review_levels") if isinstance(workflow, dict) else None
    return [str(n) for n in levels] if isinstance(levels, list) else ["review"]


# --- summary, sites, phases ---


def summary(db: Session, project: Project) -> schemas.SummaryOut:
    """Counts by state and review level, assignment, live leases, open findings and editing time."""
    now = _now()
    live = case((ScanTask.lease_expires_at > now, 1), else_=0)
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
    names = _review_level_names(project)
    return schemas.SummaryOut(
        project_id=project.id,
        total_scans=total,
        by_state=_state_counts(by_state),
        in_review_by_level=[
            schemas.ReviewLevelCount(level=lv, name=names[lv - 1] if 0 < lv <= len(names) else None, scans=n)
            for lv, n in sorted(levels.items())
        ],
        approved_fraction=_fraction(by_state["approved"], total),
        assigned=assigned,
        unassigned_open=unassigned_open,
        live_leases=leases,
        open_findings=int(open_n),
        scans_with_open_findings=int(open_scans),
        active_seconds=seconds,
        generated_at=now,
    )


def groups(db: Session, project: Project, group_by: str) -> schemas.GroupsOut:
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
            schemas.GroupStates(
                key=key,
                total=total,
                by_state=_state_counts(by_state),
                approved_fraction=_fraction(by_state.get("approved", 0), total),
            )
        )
    out.sort(key=lambda g: (-g.total, g.key is None, g.key or ""))
    return schemas.GroupsOut(project_id=project.id, group_by=group_by, groups=out)


# --- structures (volume table kept in memory, updated incrementally) ---


@dataclass
class _VolumeTable:
    """Volumes (mL) of every structure in the chosen version of each scan of one project; NaN = absent/empty."""

    column: dict[int, int]
    row_of: dict[int, int]
    volumes: np.ndarray
    has_version: np.ndarray
    version_mark: int
    transition_mark: int
    built_at: float
    moved_at: float
    computed_at: datetime
    stats: dict[int, _Stats | None] = field(default_factory=dict)
    lookup: tuple[np.ndarray, np.ndarray] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def row(self, scan_id: int) -> int:
        """The row of a scan, appended (and the arrays grown) when new."""
        index = self.row_of.get(scan_id)
        if index is None:
            index = self.row_of[scan_id] = len(self.row_of)
            if index >= len(self.volumes):
                grow = max(1024, len(self.volumes))
                self.volumes = np.vstack([self.volumes, np.full((grow, self.volumes.shape[1]), np.nan)])
                self.has_version = np.concatenate([self.has_version, np.zeros(grow, dtype=bool)])
        return index

    def rows_for(self, scan_ids: Sequence[int]) -> np.ndarray:
        """The rows of scans already in the table (vectorised look-up; the sorted index is rebuilt on growth)."""
        if self.lookup is None or len(self.lookup[0]) != len(self.row_of):
            keys = np.fromiter(self.row_of.keys(), dtype=np.int64, count=len(self.row_of))
            rows = np.fromiter(self.row_of.values(), dtype=np.int64, count=len(self.row_of))
            order = np.argsort(keys)
            self.lookup = (keys[order], rows[order])
        keys, rows = self.lookup
        return rows[np.searchsorted(keys, np.asarray(scan_ids, dtype=np.int64))]

    def put(self, structure_id: int, scan_ids: Sequence[int], volumes: Sequence[float]) -> None:
        """Record one structure's volume in the chosen versions of some scans (their rows must exist)."""
        col = self.column.get(int(structure_id))
        if col is not None and len(scan_ids):
            self.volumes[self.rows_for(scan_ids), col] = np.asarray(volumes, dtype=np.float64)

    def clear(self, scan_id: int) -> None:
        """Forget what a scan's chosen version held (before re-reading it)."""
        index = self.row_of.get(scan_id)
        if index is not None:
            self.volumes[index, :] = np.nan
            self.has_version[index] = False

    def compute(self) -> tuple[int, dict[int, _Stats]]:
        """Scans with a chosen version, and per structure count, mean and median volume (only the structures
        whose column changed since the last call are recomputed)."""
        n = len(self.row_of)
        for structure_id, col in self.column.items():
            if structure_id not in self.stats:
                values = self.volumes[:n, col]
                values = values[~np.isnan(values)]
                self.stats[structure_id] = (
                    _Stats(int(values.size), float(values.mean()), float(np.median(values)), None)
                    if values.size
                    else None
                )
        present = {sid: st for sid, st in self.stats.items() if st is not None}
        return int(self.has_version[:n].sum()), present

    def forget(self, columns: Iterable[int]) -> None:
        """Mark some columns' statistics for recomputation."""
        by_column = {col: sid for sid, col in self.column.items()}
        for col in columns:
            self.stats.pop(by_column[int(col)], None)


_tables: dict[tuple[str, int, str], _VolumeTable] = {}
_tables_lock = threading.Lock()


def clear_structure_cache() -> None:
    """Forget every in-memory volume table and turnaround answer (tests, or after bulk imports)."""
    with _tables_lock:
        _tables.clear()
    with _turnaround_lock:
        _turnaround_cache.clear()


def _marks(db: Session) -> tuple[int, int]:
    """The newest label version id and task transition id: every head move adds a version, every approval a
    transition."""
    version = db.scalar(select(func.max(LabelVersion.id))) or 0
    transition = db.scalar(select(func.max(TaskTransition.id))) or 0
    return int(version), int(transition)


def _chosen_versions(project_id: int, basis: str, scan_ids: Sequence[int] | None = None) -> Any:
    """Subquery (scan_id, version_id) of each scan's head or approved version."""
    if basis == "head":
        query = select(Scan.id.label("scan_id"), Scan.head_version_id.label("version_id")).where(
            Scan.project_id == project_id, Scan.head_version_id.is_not(None)
        )
        if scan_ids is not None:
            query = query.where(Scan.id.in_(scan_ids))
    else:
        query = select(ScanTask.scan_id.label("scan_id"), ScanTask.approved_version_id.label("version_id")).where(
            ScanTask.project_id == project_id, ScanTask.approved_version_id.is_not(None)
        )
        if scan_ids is not None:
            query = query.where(ScanTask.scan_id.in_(scan_ids))
    return query.subquery()


def _load(db: Session, table: _VolumeTable, project_id: int, basis: str, scan_ids: Sequence[int] | None) -> None:
    """Read the chosen versions' structure rows of some scans (all when scan_ids is None) into the table."""
    chosen = _chosen_versions(project_id, basis, scan_ids)
    for (scan_id,) in db.execute(select(chosen.c.scan_id)):
        index = table.row(int(scan_id))  # may grow the arrays: index first
        table.has_version[index] = True
    lvs = LabelVersionStructure
    joined = (
        select(lvs.structure_id, chosen.c.scan_id, lvs.volume_ml)
        .join(lvs, lvs.version_id == chosen.c.version_id)
        .where(lvs.status == "present", lvs.voxel_count > 0)
    )
    if _is_pg(db):  # one row per structure with two arrays: no per-row Python objects
        sub = joined.subquery()
        grouped = select(sub.c.structure_id, func.array_agg(sub.c.scan_id), func.array_agg(sub.c.volume_ml))
        for structure_id, ids, volumes in db.execute(grouped.group_by(sub.c.structure_id)):
            table.put(int(structure_id), ids, volumes)
        return
    per_structure: dict[int, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for structure_id, scan_id, ml in db.execute(joined):
        per_structure[int(structure_id)][0].append(int(scan_id))
        per_structure[int(structure_id)][1].append(float(ml))
    for structure_id, (ids, volumes) in per_structure.items():
        table.put(structure_id, ids, volumes)


def _build(db: Session, project_id: int, basis: str, structure_ids: Sequence[int]) -> _VolumeTable:
    """A full volume table of a project (the expensive path: every chosen version's structure rows)."""
    version_mark, transition_mark = _marks(db)
    now = time.monotonic()
    table = _VolumeTable(
        column={sid: i for i, sid in enumerate(structure_ids)},
        row_of={},
        volumes=np.full((1024, max(1, len(structure_ids))), np.nan),
        has_version=np.zeros(1024, dtype=bool),
        version_mark=version_mark,
        transition_mark=transition_mark,
        built_at=now,
        moved_at=now,
        computed_at=_now(),
    )
    _load(db, table, project_id, basis, None)
    return table


def _changed_scans(db: Session, table: _VolumeTable, project_id: int, basis: str) -> list[int]:
    """Scans whose chosen version may have moved since the table's marks (with an overlap for late commits)."""
    if basis == "head":
        return [
            int(i)
            for i in db.scalars(
                select(LabelVersion.scan_id)
                .join(Scan, Scan.id == LabelVersion.scan_id)
                .where(LabelVersion.id > table.version_mark - MARK_OVERLAP, Scan.project_id == project_id)
                .distinct()
            )
        ]
    return [
        int(i)
        for i in db.scalars(
            select(TaskTransition.scan_id)
            .where(TaskTransition.id > table.transition_mark - MARK_OVERLAP, TaskTransition.project_id == project_id)
            .distinct()
        )
    ]


def _refresh(db: Session, table: _VolumeTable, project_id: int, basis: str) -> bool:
    """Bring a table up to date with the versions/transitions added since it was read; False = rebuild it."""
    marks = _marks(db)
    now = time.monotonic()
    if marks != (table.version_mark, table.transition_mark):
        table.moved_at = now
    elif now - table.moved_at > LATE_COMMIT_S:
        return True  # quiet project: nothing new, nothing possibly still committing
    changed = _changed_scans(db, table, project_id, basis)
    if len(changed) > MAX_INCREMENTAL_SCANS:
        return False
    if changed:
        rows = [table.row(scan_id) for scan_id in changed]
        before = (table.volumes[rows].copy(), table.has_version[rows].copy())
        for scan_id in changed:
            table.clear(scan_id)
        _load(db, table, project_id, basis, changed)
        after = table.volumes[rows]
        moved = ~((before[0] == after) | (np.isnan(before[0]) & np.isnan(after)))
        columns = np.flatnonzero(moved.any(axis=0))
        if columns.size or not np.array_equal(before[1], table.has_version[rows]):
            table.forget(columns)
            table.computed_at = _now()
    table.version_mark, table.transition_mark = marks
    return True


def _volume_stats(
    db: Session, project_id: int, basis: str, structure_ids: Sequence[int], fresh: bool
) -> tuple[int, dict[int, _Stats], datetime, bool]:
    """(scans with a chosen version, stats per structure, when computed, whether served incrementally)."""
    bind = db.get_bind()
    key = (str(bind.engine.url) if hasattr(bind, "engine") else repr(bind), project_id, basis)
    with _tables_lock:
        table = _tables.get(key)
    incremental = False
    if table is not None and not fresh and time.monotonic() - table.built_at < STRUCTURE_REBUILD_S:
        with table.lock:
            if set(table.column) == set(structure_ids) and _refresh(db, table, project_id, basis):
                with_version, stats = table.compute()
                return with_version, stats, table.computed_at, True
    table = _build(db, project_id, basis, structure_ids)
    with _tables_lock:
        _tables[key] = table
    with table.lock:
        with_version, stats = table.compute()
    return with_version, stats, table.computed_at, incremental


def structures(db: Session, project: Project, basis: str = "head", fresh: bool = False) -> schemas.StructuresOut:
    """Per structure: scans whose head/approved version has it present and non-empty, volumes, open findings."""
    if basis not in ("head", "approved"):
        raise InvalidInput("basis must be 'head' or 'approved'")
    schema_structures = list(
        db.scalars(
            select(Structure)
            .join(LabelSchema, LabelSchema.id == Structure.schema_id)
            .where(LabelSchema.project_id == project.id)
            .order_by(Structure.position)
        )
    )
    with_version, stats, computed_at, cached = _volume_stats(
        db, project.id, basis, [s.id for s in schema_structures], fresh
    )
    findings = dict(
        db.execute(
            select(QAFinding.structure_id, func.count())
            .where(QAFinding.project_id == project.id, QAFinding.status == "open")
            .group_by(QAFinding.structure_id)
        ).all()
    )
    out = []
    for s in schema_structures:
        st = stats.get(s.id)
        out.append(
            schemas.StructureStats(
                structure_id=s.id,
                name=s.name,
                label_value=s.label_value,
                group=s.group,
                scans_present=st.count if st else 0,
                scans_with_version=with_version,
                mean_volume_ml=st.mean if st else None,
                median_volume_ml=st.median if st else None,
                open_findings=int(findings.get(s.id, 0)),
            )
        )
    return schemas.StructuresOut(
        project_id=project.id, basis=basis, structures=out, computed_at=computed_at, cached=cached
    )


# --- people: throughput and editing time ---


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


def _window_start(days: int, maximum: int, what: str) -> date:
    if not 1 <= days <= maximum:
        raise InvalidInput(f"{what} must be between 1 and {maximum}")
    return _now().date() - timedelta(days=days - 1)


def throughput(db: Session, project: Project, days: int = 30) -> schemas.ThroughputOut:
    """Per person per UTC day over the last `days` days: saves, submissions, reviews, approvals, active time."""
    since = _window_start(days, 366, "days")
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
        cell = cells[(int(user_id), _as_date(day))]
        cell["versions_saved"] += float(saves or 0)
        cell["active_seconds"] += float(seconds or 0.0)
    t_day = _utc_day(db, TaskTransition.at)
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
        cells[(int(user_id), _as_date(day))]["submissions"] += int(n)
    r_day = _utc_day(db, Review.created_at)
    approve = case((Review.decision == "approve", 1), else_=0)
    changes = case((Review.decision == "request_changes", 1), else_=0)
    for user_id, day, n, n_approve, n_changes in db.execute(
        select(Review.reviewer_user_id, r_day, func.count(), func.sum(approve), func.sum(changes))
        .where(Review.project_id == project.id, Review.created_at >= since_at, Review.reviewer_user_id.is_not(None))
        .group_by(Review.reviewer_user_id, r_day)
    ):
        cell = cells[(int(user_id), _as_date(day))]
        cell["reviews"] += int(n)
        cell["approvals"] += int(n_approve or 0)
        cell["changes_requested"] += int(n_changes or 0)
    until = _now().date()
    people = _people(db, project.id, (u for u, _ in cells))
    per_user: dict[int, list[schemas.PersonDay]] = defaultdict(list)
    for (user_id, day), cell in sorted(cells.items(), key=lambda item: (item[0][0], item[0][1])):
        per_user[user_id].append(_person_day(day, cell))
    out = []
    for user_id, person_days in per_user.items():
        totals: dict[str, float] = defaultdict(float)
        for d in person_days:
            for name, value in d.model_dump(exclude={"day"}).items():
                totals[name] += value
        name, role = people.get(user_id, (f"user {user_id}", None))
        out.append(
            schemas.PersonThroughput(
                user_id=user_id, name=name, role=role, days=person_days, totals=_person_day(until, totals)
            )
        )
    out.sort(key=lambda p: (-p.totals.active_seconds, -p.totals.reviews, p.user_id))
    return schemas.ThroughputOut(project_id=project.id, since=since, until=until, people=out)


def _person_day(day: date, cell: dict[str, float]) -> schemas.PersonDay:
    return schemas.PersonDay(
        day=day,
        versions_saved=int(cell.get("versions_saved", 0)),
        submissions=int(cell.get("submissions", 0)),
        reviews=int(cell.get("reviews", 0)),
        approvals=int(cell.get("approvals", 0)),
        changes_requested=int(cell.get("changes_requested", 0)),
        active_seconds=float(cell.get("active_seconds", 0.0)),
    )


def editing_time(db: Session, project: Project, days: int | None = None) -> schemas.EditingTimeOut:
    """Active editing seconds per scan (median, p90) overall, over approved scans, and per person."""
    since = _window_start(days, 3660, "days") if days is not None else None
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
    people_stats = _grouped_stats(db, per_scan)
    names = _people(db, project.id, people_stats)
    people = [
        schemas.PersonEditing(
            user_id=int(user_id),
            name=names.get(int(user_id), (f"user {user_id}", None))[0],
            scans=st.count,
            total_active_seconds=(st.mean or 0.0) * st.count,
            per_scan=_to_duration(st),
        )
        for user_id, st in people_stats.items()
    ]
    people.sort(key=lambda p: (-p.total_active_seconds, p.user_id))
    return schemas.EditingTimeOut(
        project_id=project.id,
        since=since,
        overall=_to_duration(by_state.get("all")),
        approved=_to_duration(by_state.get("approved")),
        people=people,
    )


def _scan_editing_stats(db: Session, project_id: int) -> dict[str, _Stats]:
    """Editing-time statistics over every scan with recorded time ("all") and over approved ones ("approved")."""
    v = ScanTask.active_seconds
    with_time = and_(ScanTask.project_id == project_id, v > 0)
    if not _is_pg(db):
        both = union_all(
            select(literal("all").label("k"), v.label("v")).where(with_time),
            select(literal("approved").label("k"), v.label("v")).where(with_time, ScanTask.state == "approved"),
        ).subquery()
        return _grouped_stats(db, select(both.c.k, both.c.v))
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
    out: dict[str, _Stats] = {}
    for key, (n, mean, median, p90) in (("all", row[0:4]), ("approved", row[4:8])):
        if n:
            out[key] = _Stats(int(n), _opt(mean), _opt(median), _opt(p90))
    return out


# --- turnaround ---


def turnaround(db: Session, project: Project, weeks: int = 12) -> schemas.TurnaroundOut:
    """Submission to first review decision, and review-cycle start to approval, over the window and per week."""
    if not 1 <= weeks <= 104:
        raise InvalidInput("weeks must be between 1 and 104")
    today = _now().date()
    since = today - timedelta(days=today.weekday()) - timedelta(weeks=weeks - 1)
    since_at = datetime.combine(since, datetime.min.time(), tzinfo=UTC)
    if not _is_pg(db):
        first, approved = _turnaround_pairs_python(db, project.id, since_at)
        return _turnaround_out(project.id, since, first, approved)
    # Every duration hangs on one decision in the window and only on transitions before it, and transitions are
    # only ever appended; so the (kind, week, seconds) pairs of decisions already seen never change. Each process
    # keeps them and, when the count and newest id of the window's decisions (an index-only probe) move on, asks
    # the database only for the new decisions' pairs.
    count, newest = _decision_marks(db, project.id, since_at)
    key = (str(db.get_bind().engine.url), project.id, since)
    with _turnaround_lock:
        entry = _turnaround_cache.get(key)
    if entry is None or entry.count > count or (entry.newest or 0) > (newest or 0):
        entry = _TurnaroundPairs(0, None, [])  # first request, or decisions were deleted: from scratch
    if (entry.count, entry.newest) != (count, newest):
        added, pairs = _new_decision_pairs(db, project.id, since_at, entry.newest or 0)
        entry = _TurnaroundPairs(entry.count + added, newest, entry.pairs + pairs)
        if entry.count != count:  # decisions came and went meanwhile: recount everything
            added, pairs = _new_decision_pairs(db, project.id, since_at, 0)
            entry = _TurnaroundPairs(added, newest, pairs)
        with _turnaround_lock:
            if len(_turnaround_cache) >= _TURNAROUND_CACHE_SIZE:
                _turnaround_cache.clear()
            _turnaround_cache[key] = entry
    grouped: dict[tuple[str, date | None], list[float]] = defaultdict(list)
    for kind, week, seconds in entry.pairs:
        grouped[(kind, week)].append(seconds)
        grouped[(kind, None)].append(seconds)
    return _turnaround_from_stats(project.id, since, {k: duration_stats(v) for k, v in grouped.items()})


@dataclass(frozen=True)
class _TurnaroundPairs:
    """The decisions of a window seen so far (how many, the newest id) and their (kind, week, seconds) pairs."""

    count: int
    newest: int | None
    pairs: list[tuple[str, date, float]]


def _decision_marks(db: Session, project_id: int, since_at: datetime) -> tuple[int, int | None]:
    """How many review decisions the window holds and the newest one's id."""
    count, newest = db.execute(
        select(func.count(), func.max(TaskTransition.id)).where(
            TaskTransition.project_id == project_id,
            TaskTransition.action.in_(("approve", "request_changes")),
            TaskTransition.at >= since_at,
        )
    ).one()
    return int(count), None if newest is None else int(newest)


def _new_decision_pairs(
    db: Session, project_id: int, since_at: datetime, after_id: int
) -> tuple[int, list[tuple[str, date, float]]]:
    """The decisions of the window with an id above ``after_id``: how many, and their duration pairs."""
    # Thousands of cheap index probes: JIT compilation would cost more than it saves (this transaction only).
    db.execute(text("SET LOCAL jit = off"))
    rows = db.execute(_TURNAROUND_PAIRS_SQL, {"project_id": project_id, "since": since_at, "after_id": after_id}).all()
    decisions = {int(r.decision_id) for r in rows}
    pairs = [(str(r.kind), r.week, float(r.s)) for r in rows if r.kind is not None]
    return len(decisions), pairs


_TURNAROUND_CACHE_SIZE = 256
_turnaround_cache: dict[tuple[str, int, date], _TurnaroundPairs] = {}
_turnaround_lock = threading.Lock()


# One pass over the decisions in the window (index (project_id, action, at)); per decision one backward probe
# of the scan's history for the event before it (a decision with none keeps a row of nulls), and for approvals
# the first submission after the previous approval. Ties in time are broken by row id.
_TURNAROUND_SQL = """
    SELECT d.id AS decision_id, d.at AS decided_at, last_event.action AS last_action, last_event.at AS last_at,
           cycle.at AS cycle_at
    FROM task_transitions d
    LEFT JOIN LATERAL (
        SELECT p.action, p.at FROM task_transitions p
        WHERE p.scan_id = d.scan_id AND p.action IN ('submit', 'approve', 'request_changes')
          AND (p.at, p.id) < (d.at, d.id)
        ORDER BY p.at DESC, p.id DESC LIMIT 1
    ) AS last_event ON true
    LEFT JOIN LATERAL (
        SELECT min(s.at) AS at FROM task_transitions s
        WHERE d.to_state = 'approved' AND s.scan_id = d.scan_id AND s.action = 'submit'
          AND (s.at, s.id) < (d.at, d.id)
          AND s.at > coalesce(
              (SELECT max(pa.at) FROM task_transitions pa
               WHERE pa.scan_id = d.scan_id AND pa.to_state = 'approved' AND (pa.at, pa.id) < (d.at, d.id)),
              '-infinity'::timestamptz)
    ) AS cycle ON true
    WHERE d.project_id = :project_id AND d.action IN ('approve', 'request_changes') AND d.at >= :since
      AND d.id > :after_id
"""
# Each decision's durations (none, one or two rows; a decision with none still answers one row of nulls, so the
# caller can count the decisions it has seen) with the ISO week of the decision.
_TURNAROUND_PAIRS_SQL = text(
    f"""
    WITH decisions AS ({_TURNAROUND_SQL})
    SELECT d.decision_id, p.kind, date_trunc('week', d.decided_at AT TIME ZONE 'UTC')::date AS week, p.s
    FROM decisions d
    LEFT JOIN LATERAL (
        SELECT 'first_review' AS kind, extract(epoch FROM d.decided_at - d.last_at)::float8 AS s
        WHERE d.last_action = 'submit'
        UNION ALL
        SELECT 'approval', extract(epoch FROM d.decided_at - d.cycle_at)::float8 WHERE d.cycle_at IS NOT NULL
    ) AS p ON true
    """
)


def _turnaround_pairs_python(
    db: Session, project_id: int, since_at: datetime
) -> tuple[list[tuple[datetime, datetime]], list[tuple[datetime, datetime]]]:
    """The same (end, start) pairs as _TURNAROUND_SQL, from one ordered pass (databases without LATERAL)."""
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
    since = _aware(since_at)
    scan: int | None = None
    last_action: str | None = None
    last_submit: datetime | None = None
    cycle_start: datetime | None = None
    for scan_id, action, to_state, at in events:
        at = _aware(at)
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


def _turnaround_out(
    project_id: int, since: date, first_review: Sequence[Any], approvals: Sequence[Any]
) -> schemas.TurnaroundOut:
    """The turnaround body from (end, start) pairs (the path for databases without LATERAL)."""
    stats: dict[tuple[str, date | None], schemas.DurationStats] = {}
    for kind, rows in (("first_review", first_review), ("approval", approvals)):
        everything: list[float] = []
        weekly: dict[date, list[float]] = defaultdict(list)
        for end, start in rows:
            end, start = _aware(end), _aware(start)
            seconds = (end - start).total_seconds()
            everything.append(seconds)
            day = end.astimezone(UTC).date()
            weekly[day - timedelta(days=day.weekday())].append(seconds)
        if everything:
            stats[(kind, None)] = duration_stats(everything)
        for week, values in weekly.items():
            stats[(kind, week)] = duration_stats(values)
    return _turnaround_from_stats(project_id, since, stats)


def _turnaround_from_stats(
    project_id: int, since: date, stats: dict[tuple[str, date | None], schemas.DurationStats]
) -> schemas.TurnaroundOut:
    """The turnaround body from statistics keyed by (kind, week) and (kind, None) for the whole window."""
    empty = duration_stats([])
    weeks = sorted({week for _, week in stats if week is not None})
    return schemas.TurnaroundOut(
        project_id=project_id,
        since=since,
        first_review=stats.get(("first_review", None), empty),
        approval=stats.get(("approval", None), empty),
        weeks=[
            schemas.TurnaroundWeek(
                week=w,
                first_review=stats.get(("first_review", w), empty),
                approval=stats.get(("approval", w), empty),
            )
            for w in weeks
        ],
    )


# --- agreement, model rounds, QA ---


def _dice_of(entry: Any) -> float | None:
    """The mean pairwise Dice of one agreement entry ({"dice": x, ...} or a bare number)."""
    value = entry.get("dice") if isinstance(entry, dict) else entry
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(float(value)):
        return None
    return min(1.0, max(0.0, float(value)))


_AGREEMENT_SQL = text(
    """
    WITH entries AS (
        SELECT rs.id AS set_id, x.key AS name,
               CASE WHEN jsonb_typeof(x.value) = 'number' THEN x.value ELSE x.value -> 'dice' END AS dice_json,
               CASE WHEN jsonb_typeof(x.value) = 'object' THEN x.value -> 'below_threshold' END AS below_json
        FROM reader_sets rs
        CROSS JOIN LATERAL jsonb_each(
            CASE WHEN jsonb_typeof(rs.agreement) = 'object' THEN rs.agreement ELSE '{}'::jsonb END
        ) AS x
        WHERE rs.project_id = :project_id
    ), measured AS (
        SELECT set_id, name, LEAST(GREATEST((dice_json #>> '{}')::float8, 0.0), 1.0) AS dice,
               coalesce(below_json = 'true'::jsonb, false) AS below
        FROM entries WHERE jsonb_typeof(dice_json) = 'number'
    )
    SELECT name, LEAST(floor(dice * :bins)::int, :bins - 1) AS bucket, count(*), sum(dice),
           count(*) FILTER (WHERE below), (SELECT count(DISTINCT set_id) FROM measured)
    FROM measured GROUP BY 1, 2
    """
)


def _agreement_cells(
    db: Session, project_id: int, bins: int
) -> tuple[int, dict[tuple[str, int], tuple[int, float, int]]]:
    """(reader sets with any agreement, (structure, bin) -> (entries, sum of Dice, below threshold))."""
    cells: dict[tuple[str, int], tuple[int, float, int]] = {}
    if _is_pg(db):  # unnest the JSON in the database: no per-entry Python work
        measured = 0
        for name, bucket, n, total, below, sets in db.execute(_AGREEMENT_SQL, {"project_id": project_id, "bins": bins}):
            cells[(str(name), int(bucket))] = (int(n), float(total), int(below))
            measured = int(sets)
        return measured, cells
    acc: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0.0, 0])
    measured = 0
    for (data,) in db.execute(select(ReaderSet.agreement).where(ReaderSet.project_id == project_id)):
        if not isinstance(data, dict):
            continue
        any_value = False
        for name, entry in data.items():
            dice = _dice_of(entry)
            if dice is None:
                continue
            any_value = True
            cell = acc[(str(name), min(bins - 1, max(0, math.floor(dice * bins))))]
            cell[0] += 1
            cell[1] += dice
            cell[2] += int(isinstance(entry, dict) and entry.get("below_threshold") is True)
        measured += int(any_value)
    return measured, {k: (int(v[0]), float(v[1]), int(v[2])) for k, v in acc.items()}


def _bins(counts: dict[int, int], bins: int) -> list[schemas.HistogramBin]:
    return [schemas.HistogramBin(lo=i / bins, hi=(i + 1) / bins, count=counts.get(i, 0)) for i in range(bins)]


def agreement(db: Session, project: Project, bins: int = 10) -> schemas.AgreementOut:
    """Histogram of per-structure agreement (mean pairwise Dice) over the project's reader sets."""
    if not 2 <= bins <= 50:
        raise InvalidInput("bins must be between 2 and 50")
    status_counts = dict(
        db.execute(
            select(ReaderSet.status, func.count()).where(ReaderSet.project_id == project.id).group_by(ReaderSet.status)
        ).all()
    )
    measured, cells = _agreement_cells(db, project.id, bins)
    in_adjudication = int(
        db.scalar(select(func.count()).where(ScanTask.project_id == project.id, ScanTask.state == "adjudication")) or 0
    )
    pooled: dict[int, int] = defaultdict(int)
    per_structure: dict[str, dict[int, int]] = defaultdict(dict)
    sums: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0])
    for (name, bucket), (n, total, below) in cells.items():
        pooled[bucket] += n
        per_structure[name][bucket] = n
        acc = sums[name]
        acc[0] += n
        acc[1] += total
        acc[2] += below
    return schemas.AgreementOut(
        project_id=project.id,
        reader_sets=measured,
        sets_by_status={s: int(status_counts.get(s, 0)) for s in READER_SET_STATUSES},
        in_adjudication=in_adjudication,
        histogram=_bins(pooled, bins),
        structures=[
            schemas.StructureAgreement(
                name=name,
                sets=int(sums[name][0]),
                mean_dice=sums[name][1] / sums[name][0] if sums[name][0] else None,
                below_threshold=int(sums[name][2]),
                histogram=_bins(counts, bins),
            )
            for name, counts in sorted(per_structure.items())
        ],
    )


def _heldout_mean(metrics: Any) -> float | None:
    """The mean held-out Dice of a training round's metrics dict, when recorded."""
    if not isinstance(metrics, dict):
        return None
    value = metrics.get("mean_dice")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    per = metrics.get("per_structure")
    if isinstance(per, dict):
        values = [float(v) for v in per.values() if isinstance(v, int | float) and not isinstance(v, bool)]
        return sum(values) / len(values) if values else None
    return None


def model_rounds(db: Session, project: Project) -> schemas.ModelRoundsOut:
    """Every model of the project with its training rounds: AI-vs-final Dice per structure, held-out means."""
    models = list(db.scalars(select(Model).where(Model.project_id == project.id).order_by(Model.id)))
    rounds_by_model: dict[int, list[TrainingRound]] = defaultdict(list)
    if models:
        for round_ in db.scalars(
            select(TrainingRound)
            .where(TrainingRound.model_id.in_([m.id for m in models]))
            .order_by(TrainingRound.created_at, TrainingRound.id)
        ):
            rounds_by_model[round_.model_id].append(round_)
    out = []
    for model in models:
        rounds = []
        for r in rounds_by_model.get(model.id, []):
            dice = {
                str(k): float(v)
                for k, v in (r.ai_vs_final_dice or {}).items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            rounds.append(
                schemas.RoundDice(
                    round_id=r.id,
                    created_at=r.created_at,
                    new_model_version_id=r.new_model_version_id,
                    previous_model_version_id=r.previous_model_version_id,
                    train_versions=r.train_versions,
                    heldout_versions=r.heldout_versions,
                    scans_revised=r.scans_revised,
                    promoted=r.promoted,
                    ai_vs_final_dice=dice,
                    ai_vs_final_mean=sum(dice.values()) / len(dice) if dice else None,
                    heldout_new_mean=_heldout_mean(r.heldout_new),
                    heldout_previous_mean=_heldout_mean(r.heldout_previous),
                )
            )
        out.append(
            schemas.ModelRounds(model_id=model.id, name=model.name, architecture=model.architecture, rounds=rounds)
        )
    return schemas.ModelRoundsOut(project_id=project.id, models=out)


def _count_by(rows: Iterable[Any]) -> list[schemas.CountBy]:
    items = [schemas.CountBy(key=None if k is None else str(k), count=int(n)) for k, n in rows]
    items.sort(key=lambda c: (-c.count, c.key is None, c.key or ""))
    return items


def qa(db: Session, project: Project) -> schemas.QaOut:
    """Open QA findings by rule, structure and severity, and all findings by status."""
    is_open = and_(QAFinding.project_id == project.id, QAFinding.status == "open")
    by_rule = db.execute(select(QAFinding.rule, func.count()).where(is_open).group_by(QAFinding.rule)).all()
    by_structure = db.execute(
        select(Structure.name, func.count())
        .select_from(QAFinding)
        .outerjoin(Structure, Structure.id == QAFinding.structure_id)
        .where(is_open)
        .group_by(Structure.name)
    ).all()
    by_severity = db.execute(select(QAFinding.severity, func.count()).where(is_open).group_by(QAFinding.severity)).all()
    by_status = dict(
        db.execute(
            select(QAFinding.status, func.count()).where(QAFinding.project_id == project.id).group_by(QAFinding.status)
        ).all()
    )
    scans = int(db.scalar(select(func.count(distinct(QAFinding.scan_id))).where(is_open)) or 0)
    return schemas.QaOut(
        project_id=project.id,
        open_findings=int(by_status.get("open", 0)),
        scans_with_open_findings=scans,
        by_rule=_count_by(by_rule),
        by_structure=_count_by(by_structure),
        by_severity=_count_by(by_severity),
        by_status={s: int(by_status.get(s, 0)) for s in FINDING_STATUSES},
    )


__all__ = [
    "agreement",
    "clear_structure_cache",
    "duration_stats",
    "editing_time",
    "groups",
    "model_rounds",
    "qa",
    "structures",
    "summary",
    "throughput",
    "turnaround",
]
