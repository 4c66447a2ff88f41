"""Audit log endpoint for leads: filter by person, scan, action and time."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from backend.audit import service
from backend.audit.dependencies import ProjectAccess, require_project
from backend.audit.schemas import AuditEventOut, AuditPage
from backend.auth.dependencies import DbSession

router = APIRouter(tags=["audit"])


@router.get("/api/projects/{project_id}/audit", response_model=AuditPage)
def list_audit(
    db: DbSession,
    access: ProjectAccess = require_project("read_audit"),
    actor_user_id: int | None = None,
    scan_id: int | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    """A project's audit events, newest first (leads and admins)."""
    flt = service.AuditFilter(actor_user_id=actor_user_id, scan_id=scan_id, action=action, since=since, until=until)
    items, total = service.list_events(db, access.project.id, flt, (page - 1) * page_size, page_size)
    return AuditPage(
        items=[AuditEventOut.model_validate(e) for e in items], total=total, page=page, page_size=page_size
    )
