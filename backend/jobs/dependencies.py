"""Job lookups with the caller's project role checked (outsiders see 404)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends

from backend.auth.dependencies import CurrentUser, DbSession
from backend.core.ids import PathId
from backend.jobs import service
from backend.models import Job, User
from backend.projects.dependencies import authorize_or_404


@dataclass(frozen=True)
class JobAccess:
    """A job the caller may act on."""

    job: Job
    user: User
    role: str


def job_access(permission: str) -> Callable[..., JobAccess]:
    """A dependency that loads job {job_id} and checks the caller's permission on its project."""

    def dependency(job_id: PathId, db: DbSession, user: CurrentUser) -> JobAccess:
        job = service.get_job(db, job_id)
        role = authorize_or_404(db, user, job.project_id, permission, f"job {job_id}")
        return JobAccess(job=job, user=user, role=role)

    return dependency


def require_job(permission: str) -> JobAccess:
    """Shorthand for Depends(job_access(permission))."""
    return Depends(job_access(permission))
