"""Export lookups: an export is a job, loaded with the caller's project permission checked (outsiders get 404)."""

from __future__ import annotations

from backend.jobs.dependencies import JobAccess, require_job

__all__ = ["JobAccess", "require_export"]


def require_export(permission: str = "read") -> JobAccess:
    """The export job {job_id} the caller may act on with `permission` in its project."""
    return require_job(permission)
