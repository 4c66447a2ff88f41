"""What the job-launching commands share: the acting lead's project, case ids and worklist filters as scan choices."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.auth import service as auth
from backend.core.errors import DomainError
from backend.models import Project, User
from backend.projects import service as projects
from backend.scans import service as scans

if TYPE_CHECKING:
    from sqlalchemy.orm import Session  # a type only: the CLI runs no SQL of its own


def acting_member(db: Session, project: str, as_user: str, permission: str = "run_jobs") -> tuple[Project, User]:
    """The project (by slug) and the acting user, who must hold `permission` in it (leads and admins run jobs)."""
    proj = projects.get_project_by_slug(db, project)
    actor = auth.get_user_by_email(db, as_user)
    projects.authorize(db, actor, proj.id, permission)
    return proj, actor


def scan_filter(site: str | None, phase: str | None, tumor: bool | None) -> scans.ScanFilter | None:
    """The worklist filter given on the command line (None when no filter option is set)."""
    if site is None and phase is None and tumor is None:
        return None
    return scans.ScanFilter(site=site, phase=phase, tumor=tumor)


def scan_ids_of_cases(db: Session, project: Project, cases: list[str] | None) -> list[int] | None:
    """The scan ids of the given case ids (None when none is given); an unknown case id is refused."""
    if not cases:
        return None
    scan_ids = list(scans.scan_ids_by_case(db, project.id, cases).values())
    if len(scan_ids) != len(set(cases)):
        raise DomainError(f"unknown case ids among {cases}")
    return scan_ids
