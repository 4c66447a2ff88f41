"""Job lookups with the caller's project role checked (outsiders see 404)."""

from __future__ import annotations

from dataclasses import dataclass

from backend.auth.access import ObjectAccess, object_access
from backend.jobs import service
from backend.models import Job, User


@dataclass(frozen=True)
class JobAccess:
    """A job the caller may act on."""

    job: Job
    user: User
    role: str


job_access: ObjectAccess[Job, JobAccess] = object_access(
    service.get_job, lambda job: job.project_id, "job", param="job_id", grant=JobAccess
)


def require_job(permission: str) -> JobAccess:
    """Shorthand for Depends(job_access(permission))."""
    return job_access.require(permission)
