"""Workflow lookups with the caller's project role checked (outsiders see 404)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends

from backend.auth.dependencies import CurrentUser, DbSession
from backend.core.ids import PathId
from backend.models import ReviewComment, Scan, User
from backend.projects.dependencies import authorize_or_404
from backend.workflow import service


@dataclass(frozen=True)
class CommentAccess:
    """A review comment the caller may act on, with its scan."""

    comment: ReviewComment
    scan: Scan
    user: User
    role: str


def comment_access(permission: str) -> Callable[..., CommentAccess]:
    """A dependency that loads comment {comment_id} and checks the caller's permission on its project."""

    def dependency(comment_id: PathId, db: DbSession, user: CurrentUser) -> CommentAccess:
        comment, scan = service.get_comment(db, comment_id)
        role = authorize_or_404(db, user, scan.project_id, permission, f"comment {comment_id}")
        return CommentAccess(comment=comment, scan=scan, user=user, role=role)

    return dependency


def require_comment(permission: str) -> CommentAccess:
    """Shorthand for Depends(comment_access(permission))."""
    return Depends(comment_access(permission))
