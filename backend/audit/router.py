"""Audit log endpoints for leads: writes by person, scan, action and time; reads by person, scan, kind and time."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from backend.audit import service
from backend.audit.dependencies import ProjectAccess, require_project
from backend.audit.schemas import AuditEventOut, AuditPage, ReadEventOut, ReadKind, ReadPage
from backend.auth.dependencies import DbSession
from backend.core.ids import PathId

router = APIRouter(tags=["audit"])


@router.get("/api/projects/{project_id}/audit", response_model=AuditPage)
def list_audit(
    db: DbSession,
    access: ProjectAccess = require_project("read_audit"),
    actor_user_id: PathId | None = None,
    scan_id: PathId | None = None,
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


@router.get("/api/projects/{project_id}/audit/reads", response_model=ReadPage)
def list_reads(
    db: DbSession,
    access: ProjectAccess = require_project("read_audit"),
    user_id: PathId | None = None,
    scan_id: PathId | None = None,
    kind: ReadKind | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 100,
) -> ReadPage:
    """Who read which scan's volume, masks or exports, newest first (leads and admins; append-only, no edits)."""
    flt = service.ReadFilter(user_id=user_id, scan_id=scan_id, kind=kind, since=since, until=until)
    items, total = service.list_reads(db, access.project.id, flt, (page - 1) * page_size, page_size)
    return ReadPage(items=[ReadEventOut.model_validate(e) for e in items], total=total, page=page, page_size=page_size)
