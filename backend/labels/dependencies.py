"""Label version lookups with the caller's project role checked (outsiders see 404)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends

from backend.auth.dependencies import CurrentUser, DbSession
from backend.core.errors import NotFound
from backend.core.ids import PathId
from backend.labels import service
from backend.models import LabelVersion, Scan, User
from backend.projects.dependencies import authorize_or_404
from backend.quality import service as quality
from backend.scans import service as scans


@dataclass(frozen=True)
class VersionAccess:
    """A label version the caller may act on, with its scan."""

    version: LabelVersion
    scan: Scan
    user: User
    role: str


def version_access(permission: str) -> Callable[..., VersionAccess]:
    """A dependency that loads version {version_id} and checks the caller's permission on its project."""

    def dependency(version_id: PathId, db: DbSession, user: CurrentUser) -> VersionAccess:
        version = service.get_version(db, version_id)
        scan = scans.get_scan(db, version.scan_id)
        role = authorize_or_404(db, user, scan.project_id, permission, f"label version {version_id}")
        if version.id in quality.hidden_version_ids(db, scan.id, user):
            # Blinding: another reader's version in an open multi-reader set does not exist for this caller.
            raise NotFound(f"label version {version_id} not found")
        return VersionAccess(version=version, scan=scan, user=user, role=role)

    return dependency


def require_version(permission: str) -> VersionAccess:
    """Shorthand for Depends(version_access(permission))."""
    return Depends(version_access(permission))
