"""Editing time: active seconds and saves per person, scan and day (the throughput the dashboard reports)."""

from __future__ import annotations

from sqlalchemy import Table, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from backend.core.errors import InvalidInput
from backend.models import ActivityDaily, Scan, ScanTask, User
from backend.workflow.service.tasks import ensure_task, utcnow

MAX_ACTIVITY_SECONDS = 600.0


def bump_activity(db: Session, scan: Scan, user_id: int, *, seconds: float = 0.0, saves: int = 0) -> None:
    """Add editing seconds and saves to today's activity row of (user, scan), race-free (upsert)."""
    values = {
        "project_id": scan.project_id,
        "scan_id": scan.id,
        "user_id": user_id,
        "day": utcnow().date(),
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
    bump_activity(db, scan, user.id, seconds=seconds)
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
