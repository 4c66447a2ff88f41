"""Import run lookups: a run is loaded with the caller's project permission checked (outsiders get 404)."""

from __future__ import annotations

from dataclasses import dataclass

from backend.auth.access import ObjectAccess, object_access
from backend.imports import service
from backend.models import ImportRun, User


@dataclass(frozen=True)
class ImportRunAccess:
    """An import run the caller may act on."""

    run: ImportRun
    user: User
    role: str


import_run_access: ObjectAccess[ImportRun, ImportRunAccess] = object_access(
    service.get_run, lambda run: run.project_id, "import run", param="run_id", grant=ImportRunAccess
)


def require_import_run(permission: str = "import") -> ImportRunAccess:
    """Shorthand for Depends(import_run_access(permission)): the run {run_id}, checked against its project."""
    return import_run_access.require(permission)
