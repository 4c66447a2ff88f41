"""Logging a read of patient data: the viewer's GETs append a read event in a transaction of its own."""

from __future__ import annotations

from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.db import end_read_snapshot
from backend.models import User


def record_read(
    db: Session,
    *,
    actor: User,
    project_id: int,
    scan_id: int | None,
    kind: str,
    object_id: int | str,
    detail: str = "",
    digest: str | None = None,
    client: str | None = None,
    not_modified: bool = False,
) -> None:
    """Append one read of patient data (volume, mask, map, export) to the read log and commit it."""
    # The request's reads so far end first: on SQLite a transaction that read and then writes fails at once when
    # another connection committed meanwhile, while one whose first statement is the write waits its turn.
    end_read_snapshot(db)
    audit.record_read(
        db,
        user_id=actor.id,
        project_id=project_id,
        scan_id=scan_id,
        kind=kind,
        object_id=object_id,
        detail=detail,
        digest=digest,
        client=client,
        not_modified=not_modified,
    )
    db.commit()
