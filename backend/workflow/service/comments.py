"""Review comments pinned on a scan (and optionally a version, structure, slice or voxel)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.db import get_or_404
from backend.core.errors import InvalidInput
from backend.models import LabelVersion, ReviewComment, Scan, User
from backend.projects import service as projects
from backend.workflow.service.tasks import utcnow


@dataclass(frozen=True)
class CommentSpec:
    """A comment to pin on a scan: text, and optionally a version, structure, slice and/or voxel."""

    text: str
    version_id: int | None = None
    structure: str | None = None
    slice_axis: int | None = None
    slice_index: int | None = None
    voxel: tuple[int, int, int] | None = None


def comment_row(db: Session, scan: Scan, author_id: int, spec: CommentSpec) -> ReviewComment:
    """A checked, not yet added comment (so a review with a bad comment writes nothing)."""
    text = spec.text.strip()
    if not text:
        raise InvalidInput("a comment needs text")
    if len(text) > 10000:
        raise InvalidInput("a comment may hold at most 10000 characters")
    if spec.version_id is not None:
        version = db.get(LabelVersion, spec.version_id)
        if version is None or version.scan_id != scan.id:
            raise InvalidInput(f"version {spec.version_id} is not a version of scan {scan.id}")
    structure_id = None
    if spec.structure is not None:
        structure_id = projects.find_structure(projects.structures_of(db, scan.project_id), spec.structure).id
    shape = [int(s) for s in scan.shape]
    if (spec.slice_axis is None) != (spec.slice_index is None):
        raise InvalidInput("a slice location needs both slice_axis and slice_index")
    if spec.slice_axis is not None and spec.slice_index is not None:
        if spec.slice_axis not in (0, 1, 2):
            raise InvalidInput("slice_axis must be 0, 1 or 2")
        if not 0 <= spec.slice_index < shape[spec.slice_axis]:
            raise InvalidInput(
                f"slice_index {spec.slice_index} is outside 0..{shape[spec.slice_axis] - 1} on axis {spec.slice_axis}"
            )
    if spec.voxel is not None and (
        len(spec.voxel) != 3 or not all(0 <= v < n for v, n in zip(spec.voxel, shape, strict=True))
    ):
        raise InvalidInput(f"voxel {list(spec.voxel)} is outside the scan of shape {shape}")
    comment = ReviewComment(
        scan_id=scan.id,
        version_id=spec.version_id,
        author_user_id=author_id,
        structure_id=structure_id,
        slice_axis=spec.slice_axis,
        slice_index=spec.slice_index,
        voxel=list(spec.voxel) if spec.voxel is not None else None,
        text=text,
        resolved=False,
        created_at=utcnow(),
    )
    return comment


def add_comment(db: Session, scan: Scan, user: User, spec: CommentSpec) -> ReviewComment:
    """Pin a comment on a scan (and version, structure, slice or voxel)."""
    comment = comment_row(db, scan, user.id, spec)
    db.add(comment)
    db.flush()
    audit.record(
        db,
        actor_user_id=user.id,
        action="comment.create",
        entity_type="review_comment",
        entity_id=comment.id,
        project_id=scan.project_id,
        scan_id=scan.id,
        details={"version_id": spec.version_id, "structure": spec.structure},
    )
    return comment


def list_comments(db: Session, scan: Scan, *, review_ids: Collection[int] | None = None) -> list[ReviewComment]:
    """The scan's comments (optionally only those of some reviews), oldest first."""
    query = select(ReviewComment).where(ReviewComment.scan_id == scan.id)
    if review_ids is not None:
        query = query.where(ReviewComment.review_id.in_(list(review_ids)))
    return list(db.scalars(query.order_by(ReviewComment.created_at, ReviewComment.id)))


def get_comment(db: Session, comment_id: int) -> tuple[ReviewComment, Scan]:
    """A comment and its scan."""
    comment = get_or_404(db, ReviewComment, comment_id, "comment")
    scan = db.get(Scan, comment.scan_id)
    assert scan is not None
    return comment, scan


def set_comment_resolved(db: Session, comment: ReviewComment, user: User, resolved: bool) -> ReviewComment:
    """Mark a comment resolved (or open again)."""
    comment.resolved = resolved
    scan = db.get(Scan, comment.scan_id)
    audit.record(
        db,
        actor_user_id=user.id,
        action="comment.resolve" if resolved else "comment.reopen",
        entity_type="review_comment",
        entity_id=comment.id,
        project_id=scan.project_id if scan else None,
        scan_id=comment.scan_id,
    )
    db.flush()
    return comment


def structure_names(db: Session, project_id: int) -> dict[int, str]:
    """Structure names of a project by id (for serialising comments, reviews and QA findings)."""
    return {s.id: s.name for s in projects.structures_of(db, project_id)}
