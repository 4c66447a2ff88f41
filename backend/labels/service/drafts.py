"""Drafts: a user's unsaved edit of a scan, kept as one blob until they save or discard it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.errors import InvalidInput, NotFound
from backend.models import LabelDraft, LabelVersion, Scan, User

MAX_DRAFT_BYTES = 64 * 1024 * 1024


def save_draft(
    db: Session, blobs: BlobStore, scan: Scan, user: User, base_version_id: int | None, payload: bytes
) -> LabelDraft:
    """Keep (replace) the user's unsaved edit of a scan; the blob is written before the row points at it."""
    if len(payload) > MAX_DRAFT_BYTES:
        raise InvalidInput(f"a draft may hold at most {MAX_DRAFT_BYTES // (1 << 20)} MiB")
    if base_version_id is not None:
        base = db.get(LabelVersion, base_version_id)
        if base is None or base.scan_id != scan.id:
            raise InvalidInput(f"base version {base_version_id} is not a version of scan {scan.id}")
    digest = blobs.put_bytes(payload)
    draft = db.scalar(select(LabelDraft).where(LabelDraft.scan_id == scan.id, LabelDraft.user_id == user.id))
    if draft is None:
        draft = LabelDraft(scan_id=scan.id, user_id=user.id)
        db.add(draft)
    draft.base_version_id = base_version_id
    draft.payload_digest = digest
    draft.payload_bytes = len(payload)
    draft.updated_at = datetime.now(UTC)
    db.flush()
    return draft


def get_draft(db: Session, scan: Scan, user: User) -> LabelDraft:
    """The user's draft of a scan."""
    draft = db.scalar(select(LabelDraft).where(LabelDraft.scan_id == scan.id, LabelDraft.user_id == user.id))
    if draft is None:
        raise NotFound(f"no draft of scan {scan.id}")
    return draft


def delete_draft(db: Session, scan: Scan, user: User) -> None:
    """Drop the user's draft (after a save, or when they discard it)."""
    draft = db.scalar(select(LabelDraft).where(LabelDraft.scan_id == scan.id, LabelDraft.user_id == user.id))
    if draft is not None:
        db.delete(draft)
        db.flush()
