"""Audit dependencies: reading the log needs the read_audit permission on the project."""

from __future__ import annotations

from backend.projects.dependencies import ProjectAccess, require_project

__all__ = ["ProjectAccess", "require_project"]
