"""Project lookups with the caller's role checked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends
from sqlalchemy.orm import Session

from backend.auth.dependencies import CurrentUser, DbSession
from backend.core.errors import NotFound
from backend.core.ids import PathId
from backend.models import Project, User
from backend.projects import service


@dataclass(frozen=True)
class ProjectAccess:
    """A project the caller may act on, with the caller and their role."""

    project: Project
    user: User
    role: str


def authorize_or_404(db: Session, user: User, project_id: int, permission: str, what: str) -> str:
    """The caller's role for a permission, or NotFound naming `what`: outsiders never learn that it exists."""
    try:
        return service.authorize(db, user, project_id, permission)
    except NotFound as exc:
        raise NotFound(f"{what} not found") from exc


def project_access(permission: str) -> Callable[..., ProjectAccess]:
    """A dependency that loads project {project_id} and checks the caller's permission on it."""

    def dependency(project_id: PathId, db: DbSession, user: CurrentUser) -> ProjectAccess:
        project = service.get_project(db, project_id)
        role = service.authorize(db, user, project.id, permission)
        return ProjectAccess(project=project, user=user, role=role)

    return dependency


def require_project(permission: str) -> ProjectAccess:
    """Shorthand for Depends(project_access(permission)) in endpoint signatures."""
    return Depends(project_access(permission))
