"""Dashboard dependencies: reading it needs the read_dashboard permission on the project (lead, admin, reviewer)."""

from __future__ import annotations

from backend.projects.dependencies import ProjectAccess, require_project

READ_DASHBOARD = "read_dashboard"


def require_dashboard() -> ProjectAccess:
    """The project {project_id}, checked for the caller's read_dashboard permission."""
    return require_project(READ_DASHBOARD)


__all__ = ["READ_DASHBOARD", "ProjectAccess", "require_dashboard"]
