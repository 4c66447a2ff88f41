"""Label version lookups with the caller's project role checked (outsiders see 404)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from backend.auth.access import ObjectAccess, object_access
from backend.labels import service
from backend.models import LabelVersion, Scan, User
from backend.quality import service as quality
from backend.scans import service as scans


@dataclass(frozen=True)
class VersionAccess:
    """A label version the caller may act on, with its scan."""

    version: LabelVersion
    scan: Scan
    user: User
    role: str


def _version_with_scan(db: Session, version_id: int) -> tuple[LabelVersion, Scan]:
    """A label version and its scan (whose project decides access)."""
    version = service.get_version(db, version_id)
    return version, scans.get_scan(db, version.scan_id)


def _blinded(db: Session, loaded: tuple[LabelVersion, Scan], user: User) -> bool:
    """Whether the version is another reader's in an open multi-reader set: for this caller it does not exist."""
    version, scan = loaded
    return version.id in quality.hidden_version_ids(db, scan.id, user)


version_access: ObjectAccess[tuple[LabelVersion, Scan], VersionAccess] = object_access(
    _version_with_scan,
    lambda loaded: loaded[1].project_id,
    "label version",
    param="version_id",
    grant=lambda loaded, user, role: VersionAccess(*loaded, user, role),
    hidden=_blinded,
)


def require_version(permission: str) -> VersionAccess:
    """Shorthand for Depends(version_access(permission))."""
    return version_access.require(permission)
