"""Blinding: while a reader set is open its readers must not see each other's work."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.models import LabelVersion, ReaderSet, ReaderSetMember, User
from backend.quality.service.readers import is_lead

# Sets whose readers are still blinded from each other.
BLINDED_STATUSES = ("open",)


def is_blinded(reader_set: ReaderSet, reader_ids: Iterable[int], viewer: User, viewer_is_lead: bool) -> bool:
    """Whether the viewer must not see the other readers' work of this set yet.

    While a set is open its readers are blinded from each other, whatever their role: a lead who reads too is a
    reader first (seeing the others' masks would bias the reading the study measures). A lead who does not read
    oversees the set and sees everything.
    """
    if reader_set.status not in BLINDED_STATUSES:
        return False
    return not viewer_is_lead or viewer.id in set(reader_ids)


def visible_member_version(member: ReaderSetMember, viewer: User, blinded: bool) -> int | None:
    """A member's submitted version id as the viewer may see it (hidden from other readers while blinded)."""
    if blinded and member.user_id != viewer.id:
        return None
    return member.version_id


def hidden_version_ids(db: Session, scan_id: int, user: User) -> set[int]:
    """Versions of a scan the user may not see: other readers' versions while a set on the scan is open.

    A reader's versions are those they saved on the scan after the set's base version. Leads and admins who do not
    read in a set see everything of it; everyone else (a reading lead included) sees only their own reading until
    the set is complete.
    """
    open_sets = list(
        db.scalars(select(ReaderSet).where(ReaderSet.scan_id == scan_id, ReaderSet.status.in_(BLINDED_STATUSES)))
    )
    if not open_sets:
        return set()
    lead = is_lead(db, user, open_sets[0].project_id)
    hidden: set[int] = set()
    for reader_set in open_sets:
        readers = list(
            db.scalars(select(ReaderSetMember.user_id).where(ReaderSetMember.reader_set_id == reader_set.id))
        )
        if not is_blinded(reader_set, readers, user, lead):
            continue
        others = [uid for uid in readers if uid != user.id]
        if not others:
            continue
        query = select(LabelVersion.id).where(LabelVersion.scan_id == scan_id, LabelVersion.author_user_id.in_(others))
        if reader_set.base_version_id is not None:
            query = query.where(LabelVersion.id > reader_set.base_version_id)
        hidden.update(db.scalars(query))
    return hidden
