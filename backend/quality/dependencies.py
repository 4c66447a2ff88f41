"""Reader-set and finding lookups with the caller's project role checked (outsiders see 404)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends

from backend.auth.dependencies import CurrentUser, DbSession
from backend.core.ids import PathId
from backend.models import QAFinding, ReaderSet, User
from backend.projects.dependencies import authorize_or_404
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


def reader_set_access(permission: str) -> Callable[..., ReaderSetAccess]:
    """A dependency that loads reader set {reader_set_id} and checks the caller's permission on its project."""

    def dependency(reader_set_id: PathId, db: DbSession, user: CurrentUser) -> ReaderSetAccess:
        reader_set = service.get_reader_set(db, reader_set_id)
        role = authorize_or_404(db, user, reader_set.project_id, permission, f"reader set {reader_set_id}")
        return ReaderSetAccess(reader_set=reader_set, user=user, role=role)

    return dependency


def require_reader_set(permission: str) -> ReaderSetAccess:
    """Shorthand for Depends(reader_set_access(permission))."""
    return Depends(reader_set_access(permission))


def finding_access(permission: str) -> Callable[..., FindingAccess]:
    """A dependency that loads finding {finding_id} and checks the caller's permission on its project."""

    def dependency(finding_id: PathId, db: DbSession, user: CurrentUser) -> FindingAccess:
        finding = service.get_finding(db, finding_id)
        role = authorize_or_404(db, user, finding.project_id, permission, f"finding {finding_id}")
        return FindingAccess(finding=finding, user=user, role=role)

    return dependency


def require_finding(permission: str) -> FindingAccess:
    """Shorthand for Depends(finding_access(permission))."""
    return Depends(finding_access(permission))
