"""Reader-set and finding lookups with the caller's project role checked (outsiders see 404)."""

from __future__ import annotations

from dataclasses import dataclass

from backend.auth.access import ObjectAccess, object_access
from backend.models import QAFinding, ReaderSet, User
from backend.quality import service


@dataclass(frozen=True)
class ReaderSetAccess:
    """A reader set the caller may act on, with the caller and their role in its project."""

    reader_set: ReaderSet
    user: User
    role: str


@dataclass(frozen=True)
class FindingAccess:
    """A QA finding the caller may act on, with the caller and their role in its project."""

    finding: QAFinding
    user: User
    role: str


reader_set_access: ObjectAccess[ReaderSet, ReaderSetAccess] = object_access(
    service.get_reader_set,
    lambda reader_set: reader_set.project_id,
    "reader set",
    param="reader_set_id",
    grant=ReaderSetAccess,
)
finding_access: ObjectAccess[QAFinding, FindingAccess] = object_access(
    service.get_finding, lambda finding: finding.project_id, "finding", param="finding_id", grant=FindingAccess
)


def require_reader_set(permission: str) -> ReaderSetAccess:
    """Shorthand for Depends(reader_set_access(permission))."""
    return reader_set_access.require(permission)


def require_finding(permission: str) -> FindingAccess:
    """Shorthand for Depends(finding_access(permission))."""
    return finding_access.require(permission)
