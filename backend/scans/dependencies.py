"""Scan lookups with the caller's project role checked (outsiders see 404)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends

from backend.auth.dependencies import CurrentUser, DbSession
from backend.core.ids import PathId
from backend.models import Scan, User
from backend.projects.dependencies import authorize_or_404
from backend.scans import service


@dataclass(frozen=True)
class ScanAccess:
    """A scan the caller may act on, with the caller and their role in its project."""

    scan: Scan
    user: User
    role: str


def scan_access(permission: str) -> Callable[..., ScanAccess]:
    """A dependency that loads scan {scan_id} and checks the caller's permission on its project."""

    def dependency(scan_id: PathId, db: DbSession, user: CurrentUser) -> ScanAccess:
        scan = service.get_scan(db, scan_id)
        role = authorize_or_404(db, user, scan.project_id, permission, f"scan {scan_id}")
        return ScanAccess(scan=scan, user=user, role=role)

    return dependency


def require_scan(permission: str) -> ScanAccess:
    """Shorthand for Depends(scan_access(permission))."""
    return Depends(scan_access(permission))
