"""Evaluation run lookups with the caller's project role checked (outsiders see 404)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends

from backend.auth.dependencies import CurrentUser, DbSession
from backend.core.ids import PathId
from backend.evaluation import service
from backend.models import EvaluationRun, User
from backend.projects.dependencies import authorize_or_404


@dataclass(frozen=True)
class EvaluationAccess:
    """An evaluation run the caller may act on."""

    run: EvaluationRun
    user: User
    role: str


def evaluation_access(permission: str) -> Callable[..., EvaluationAccess]:
    """A dependency that loads evaluation {evaluation_id} and checks the caller's permission on its project."""

    def dependency(evaluation_id: PathId, db: DbSession, user: CurrentUser) -> EvaluationAccess:
        run = service.get_run(db, evaluation_id)
        role = authorize_or_404(db, user, run.project_id, permission, f"evaluation {evaluation_id}")
        return EvaluationAccess(run=run, user=user, role=role)

    return dependency


def require_evaluation(permission: str) -> EvaluationAccess:
    """Shorthand for Depends(evaluation_access(permission))."""
    return Depends(evaluation_access(permission))
