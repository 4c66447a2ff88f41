"""The project named in a MONAI Label URL (slug or id), with the caller's role checked (outsiders see 404)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends

from backend.auth.access import authorize_or_404
from backend.auth.dependencies import CurrentUser, DbSession
from backend.core.errors import NotFound
from backend.projects import service as projects
from backend.projects.dependencies import ProjectAccess


def project_access(permission: str) -> Callable[..., ProjectAccess]:
    """A dependency loading `{project}` (slug or numeric id) and checking `permission` on it."""

    def dependency(project: str, db: DbSession, user: CurrentUser) -> ProjectAccess:
        try:
            found = projects.get_project(db, int(project)) if project.isdigit() else None
        except NotFound:
            found = None
        if found is None:
            try:
                found = projects.get_project_by_slug(db, project)
            except NotFound as exc:
                raise NotFound(f"project {project!r} not found") from exc
        role = authorize_or_404(db, user, found.id, permission, f"project {project!r}")
        return ProjectAccess(found, user, role)

    return dependency


def require_project(permission: str) -> ProjectAccess:
    """Shorthand for Depends(project_access(permission))."""
    return Depends(project_access(permission))
