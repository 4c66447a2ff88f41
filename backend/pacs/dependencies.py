"""PACS endpoint access: the project (or the scan) named in the path, checked against the caller's role.

Configuring the source, searching, retrieving and sending SEGs need `import` (leads and admins); the identifier map
of de-identification needs the lead permission (`assign`). Outsiders get the same 404 as a missing id."""

from __future__ import annotations

from dataclasses import dataclass

from backend.auth.access import ObjectAccess, object_access
from backend.models import Project, Scan, User
from backend.projects import service as projects
from backend.scans import service as scans

PACS_PERMISSION = "import"
IDENTITY_PERMISSION = projects.LEAD_PERMISSION


@dataclass(frozen=True)
class PacsProjectAccess:
    """A project whose PACS the caller may use."""

    project: Project
    user: User
    role: str


@dataclass(frozen=True)
class PacsScanAccess:
    """A scan whose versions the caller may send to its project's PACS."""

    scan: Scan
    user: User
    role: str


pacs_project_access: ObjectAccess[Project, PacsProjectAccess] = object_access(
    projects.get_project, lambda project: project.id, "project", param="project_id", grant=PacsProjectAccess
)
pacs_scan_access: ObjectAccess[Scan, PacsScanAccess] = object_access(
    scans.get_scan, lambda scan: scan.project_id, "scan", param="scan_id", grant=PacsScanAccess
)


def require_pacs_project(permission: str = PACS_PERMISSION) -> PacsProjectAccess:
    """Shorthand for Depends(pacs_project_access(permission)): the project {project_id}."""
    return pacs_project_access.require(permission)


def require_pacs_scan(permission: str = PACS_PERMISSION) -> PacsScanAccess:
    """Shorthand for Depends(pacs_scan_access(permission)): the scan {scan_id}, checked against its project."""
    return pacs_scan_access.require(permission)
