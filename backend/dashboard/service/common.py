"""Helpers the dashboard views share: the clock, statistics of durations (percentile_cont on PostgreSQL, the
same interpolation in Python elsewhere), UTC days and the project's review level names."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Date, Select, cast, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from backend.core.errors import InvalidInput
from backend.dashboard.service.results import DurationStats, StateCounts
from backend.models import Project
from backend.models.workflow import TASK_STATES


def now() -> datetime:
    """The current moment in UTC."""
    return datetime.now(UTC)


def is_pg(db: Session) -> bool:
    """Whether the session talks to PostgreSQL (SQL percentiles, LATERAL, the turnaround table)."""
    return db.get_bind().dialect.name == "postgresql"


def engine_key(db: Session) -> str:
    """Which database a process-local memo belongs to (tests run PostgreSQL and SQLite side by side)."""
    bind = db.get_bind()
    return str(bind.engine.url) if hasattr(bind, "engine") else repr(bind)


def state_counts(counts: dict[str, int]) -> StateCounts:
    """Counts for every workflow state, zeros included."""
    return StateCounts(**{state: int(counts.get(state, 0)) for state in TASK_STATES})


def fraction(part: int, whole: int) -> float:
    """part / whole, 0 for an empty whole."""
    return part / whole if whole else 0.0


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th quantile (0..1) of sorted values, linearly interpolated (as percentile_cont)."""
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def duration_stats(values: Iterable[float]) -> DurationStats:
    """Count, mean, median and p90 of durations in seconds (nulls when there are none)."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return DurationStats(count=0, mean_s=None, median_s=None, p90_s=None)
    return DurationStats(
        count=len(ordered),
        mean_s=sum(ordered) / len(ordered),
        median_s=percentile(ordered, 0.5),
        p90_s=percentile(ordered, 0.9),
    )


EMPTY_DURATIONS = DurationStats(count=0, mean_s=None, median_s=None, p90_s=None)


def opt_float(value: Any) -> float | None:
    """A database number as a float, None kept."""
    return None if value is None else float(value)


def grouped_durations(db: Session, source: Select[*tuple[Any, ...]]) -> dict[Any, DurationStats]:
    """Statistics of the last column of `source` grouped by its first column (SQL percentiles on PostgreSQL)."""
    sub = source.subquery()
    columns = list(sub.c)
    key, value = columns[0], columns[-1]
    if is_pg(db):
        rows = db.execute(
            select(
                key,
                func.count(value),
                func.avg(value),
                func.percentile_cont(0.5).within_group(value),
                func.percentile_cont(0.9).within_group(value),
            ).group_by(key)
        ).all()
        return {
            k: DurationStats(int(n), opt_float(mean), opt_float(median), opt_float(p90))
            for k, n, mean, median, p90 in rows
            if n
        }
    values: dict[Any, list[float]] = defaultdict(list)
    for k, v in db.execute(select(key, value)).all():
        if v is not None:
            values[k].append(float(v))
    return {k: duration_stats(vs) for k, vs in values.items()}


def utc_day(db: Session, column: Any) -> ColumnElement[Any]:
    """The UTC calendar day of a timestamp column."""
    if is_pg(db):
        return cast(func.timezone("UTC", column), Date)
    return func.date(column)


def as_date(value: Any) -> date:
    """A date from the database (SQLite answers ISO text)."""
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def aware(moment: datetime) -> datetime:
    """A timestamp with its UTC zone (SQLite answers naive ones)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def window_start(days: int, maximum: int, what: str) -> date:
    """The first UTC day of a window of `days` days ending today."""
    if not 1 <= days <= maximum:
        raise InvalidInput(f"{what} must be between 1 and {maximum}")
    return now().date() - timedelta(days=days - 1)


def review_level_names(project: Project) -> list[str]:
    """The configured names of the project's review levels (one level named 'review' by default)."""
    workflow = (project.settings or {}).get("workflow") or {}
    levels = workflow.get("review_levels") if isinstance(workflow, dict) else None
    return [str(n) for n in levels] if isinstance(levels, list) else ["review"]
