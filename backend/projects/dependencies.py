"""Project lookups with the caller's role checked (outsiders see 404)."""

from __future__ import annotations

from dataclasses import dataclass

from backend.auth.access import ObjectAccess, authorize_or_404, object_access
from backend.models import Project, User
from backend.projects import service

__all__ = ["ProjectAccess", "authorize_or_404", "project_access", "require_project"]


@dataclass(frozen=True)
class ProjectAccess:
    """A project the caller may act on, with the caller and their role."""

    project: Project
    user: User
    role: str


project_access: ObjectAccess[Project, ProjectAccess] = object_access(
    service.get_project, lambda project: project.id, "project", param="project_id", grant=ProjectAccess
)


def require_project(permission: str) -> ProjectAccess:
    """Shorthand for Depends(project_access(permission)) in endpoint signatures."""
    return project_access.require(permission)
