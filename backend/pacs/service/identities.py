"""The map of original to research identifiers of a de-identifying project (server-side; leads read it)."""

from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.models import PacsIdentity, PacsSource
from backend.pacs.service.deid import Pseudonyms


def pseudonyms(source: PacsSource) -> Pseudonyms:
    """The research identifiers of a project's source (its salt)."""
    return Pseudonyms(source.salt)


def remember(db: Session, project_id: int, kind: str, original: str, research: str) -> None:
    """Record one original -> research identifier (idempotent; a concurrent writer of the same pair is fine)."""
    if not original or original == research:
        return
    exists = select(PacsIdentity.id).where(
        PacsIdentity.project_id == project_id, PacsIdentity.kind == kind, PacsIdentity.original == original
    )
    if db.scalar(exists) is not None:
        return
    try:
        with db.begin_nested():
            db.add(PacsIdentity(project_id=project_id, kind=kind, original=original, research=research))
            db.flush()
    except IntegrityError:
        if db.scalar(exists) is None:
            raise


def original_of(db: Session, project_id: int, kind: str, research: str) -> str | None:
    """The original identifier a research one replaced (None when it is no research identifier)."""
    return db.scalar(
        select(PacsIdentity.original)
        .where(PacsIdentity.project_id == project_id, PacsIdentity.kind == kind, PacsIdentity.research == research)
        .limit(1)
    )


def list_identities(
    db: Session, project_id: int, *, kind: str | None, search: str | None, offset: int, limit: int
) -> tuple[list[PacsIdentity], int]:
    """A page of the project's identifier map (optionally one kind, or the rows whose either side matches)."""
    query = select(PacsIdentity).where(PacsIdentity.project_id == project_id)
    if kind:
        query = query.where(PacsIdentity.kind == kind)
    if search:
        query = query.where(or_(PacsIdentity.original == search, PacsIdentity.research == search))
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = db.scalars(query.order_by(PacsIdentity.id).offset(offset).limit(limit))
    return list(rows), int(total)
