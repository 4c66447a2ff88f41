"""Workflow lookups with the caller's project role checked (outsiders see 404)."""

from __future__ import annotations

from dataclasses import dataclass

from backend.auth.access import ObjectAccess, object_access
from backend.models import ReviewComment, Scan, User
from backend.workflow import service


@dataclass(frozen=True)
class CommentAccess:
    """A review comment the caller may act on, with its scan."""

    comment: ReviewComment
    scan: Scan
    user: User
    role: str


comment_access: ObjectAccess[tuple[ReviewComment, Scan], CommentAccess] = object_access(
    service.get_comment,
    lambda loaded: loaded[1].project_id,
    "comment",
    param="comment_id",
    grant=lambda loaded, user, role: CommentAccess(*loaded, user, role),
)


def require_comment(permission: str) -> CommentAccess:
    """Shorthand for Depends(comment_access(permission))."""
    return comment_access.require(permission)
