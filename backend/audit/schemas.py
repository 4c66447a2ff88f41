"""Response bodies of the audit log endpoints (writes and reads)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

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


ReadKind = Literal["volume", "mask", "combined", "export", "attention", "prediction"]


class ReadEventOut(BaseModel):
    """One served read: who opened which scan's volume, mask or export, when and from where."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    user_id: int | None
    project_id: int
    scan_id: int | None
    kind: ReadKind
    object_id: str
    detail: str
    digest: str | None
    client: str | None
    not_modified: bool


class ReadPage(BaseModel):
    """One page of read events, newest first."""

    items: list[ReadEventOut]
    total: int
    page: int
    page_size: int
