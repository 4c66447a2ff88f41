"""Project lookups with the caller's role checked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends

from backend.auth.dependencies import CurrentUser, DbSession
from backend.models import Project, User
from backend.projects import service


@dataclass(frozen=True)
class ProjectAccess:
    """A project the caller may act on, with the caller and their role."""

    project: Project
    user: User
    role: str


def project_access(permission: str) -> Callable[..., ProjectAccess]:
    """A dependency that loads project {project_id} and checks the caller's permission on it."""

    def dependency(project_id: int, db: DbSession, user: CurrentUser) -> ProjectAccess:
        project = service.get_project(db, project_id)
        role = service.authorize(db, user, project.id, permission)
        return ProjectAccess(project=project, user=user, role=role)

    return dependency


def require_project(permission: str) -> ProjectAccess:
    """Shorthand for Depends(project_access(permission)) in endpoint signatures."""
    return Depends(project_access(permission))
