"""Append-only audit log: record every write and transition; let leads read it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.models import AuditEvent


def record(
    db: Session,
    *,
    actor_user_id: int | None,
    action: str,
    entity_type: str,
    entity_id: int | str,
    project_id: int | None = None,
    scan_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one audit event in the caller's transaction (it commits or rolls back with the write)."""
    event = AuditEvent(
        actor_user_id=actor_user_id,
        action=action,
        entity_type=entity_type,
        entity_id=str(entity_id),
        project_id=project_id,
        scan_id=scan_id,
        details=details or {},
    )
    db.add(event)
    return event


@dataclass(frozen=True)
class AuditFilter:
    """Filters of the audit log page."""

    actor_user_id: int | None = None
    scan_id: int | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _utc(moment: datetime) -> datetime:
    """The instant in UTC (a naive time is taken as UTC): SQLite stores UTC wall times and drops any offset."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def list_events(
    db: Session, project_id: int, flt: AuditFilter, offset: int, limit: int
) -> tuple[list[AuditEvent], int]:
    """One page of a project's audit events, newest first, with the total count."""
    query = select(AuditEvent).where(AuditEvent.project_id == project_id)
    if flt.actor_user_id is not None:
        query = query.where(AuditEvent.actor_user_id == flt.actor_user_id)
    if flt.scan_id is not None:
        query = query.where(AuditEvent.scan_id == flt.scan_id)
    if flt.action:
        query = query.where(AuditEvent.action == flt.action)
    if flt.since is not None:
        query = query.where(AuditEvent.at >= _utc(flt.since))
    if flt.until is not None:
        query = query.where(AuditEvent.at < _utc(flt.until))
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = db.scalars(query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).offset(offset).limit(limit))
    return list(rows), int(total)
