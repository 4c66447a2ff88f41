"""Response bodies of the audit log endpoint."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class AuditEventOut(BaseModel):
    """One audit event."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor_user_id: int | None
    project_id: int | None
    scan_id: int | None
    action: str
    entity_type: str
    entity_id: str
    details: dict[str, Any]


class AuditPage(BaseModel):
    """One page of audit events, newest first."""

    items: list[AuditEventOut]
    total: int
    page: int
    page_size: int
