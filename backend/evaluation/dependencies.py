"""Evaluation run lookups with the caller's project role checked (outsiders see 404)."""

from __future__ import annotations

from dataclasses import dataclass

from backend.auth.access import ObjectAccess, object_access
from backend.evaluation import service
from backend.models import EvaluationRun, User


@dataclass(frozen=True)
class EvaluationAccess:
    """An evaluation run the caller may act on."""

    run: EvaluationRun
    user: User
    role: str


evaluation_access: ObjectAccess[EvaluationRun, EvaluationAccess] = object_access(
    service.get_run, lambda run: run.project_id, "evaluation", param="evaluation_id", grant=EvaluationAccess
)


def require_evaluation(permission: str) -> EvaluationAccess:
    """Shorthand for Depends(evaluation_access(permission))."""
    return evaluation_access.require(permission)
