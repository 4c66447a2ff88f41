"""Scan lookups with the caller's project role checked (outsiders see 404)."""

from __future__ import annotations

from dataclasses import dataclass

from backend.auth.access import ObjectAccess, object_access
from backend.models import Scan, User
from backend.scans import service


@dataclass(frozen=True)
class ScanAccess:
    """A scan the caller may act on, with the caller and their role in its project."""

    scan: Scan
    user: User
    role: str


scan_access: ObjectAccess[Scan, ScanAccess] = object_access(
    service.get_scan, lambda scan: scan.project_id, "scan", param="scan_id", grant=ScanAccess
)


def require_scan(permission: str) -> ScanAccess:
    """Shorthand for Depends(scan_access(permission))."""
    return scan_access.require(permission)
