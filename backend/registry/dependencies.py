"""Model lookups with the caller's project role checked (outsiders see 404)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends

from backend.auth.dependencies import CurrentUser, DbSession
from backend.core.ids import PathId
from backend.models import Model, ModelVersion, User
from backend.projects.dependencies import authorize_or_404
from backend.registry import service


@dataclass(frozen=True)
class ModelAccess:
    """A model the caller may act on."""

    model: Model
    user: User
    role: str


def model_access(permission: str) -> Callable[..., ModelAccess]:
    """A dependency that loads model {model_id} and checks the caller's permission on its project."""

    def dependency(model_id: PathId, db: DbSession, user: CurrentUser) -> ModelAccess:
        model = service.get_model(db, model_id)
        role = authorize_or_404(db, user, model.project_id, permission, f"model {model_id}")
        return ModelAccess(model=model, user=user, role=role)

    return dependency


def require_model(permission: str) -> ModelAccess:
    """Shorthand for Depends(model_access(permission))."""
    return Depends(model_access(permission))


@dataclass(frozen=True)
class ModelVersionAccess:
    """A model version the caller may act on, with its model."""

    version: ModelVersion
    model: Model
    user: User
    role: str


def model_version_access(permission: str) -> Callable[..., ModelVersionAccess]:
    """A dependency that loads model version {version_id} and checks the caller's permission on its project."""

    def dependency(version_id: PathId, db: DbSession, user: CurrentUser) -> ModelVersionAccess:
        version = service.get_model_version(db, version_id)
        model = service.get_model(db, version.model_id)
        role = authorize_or_404(db, user, model.project_id, permission, f"model version {version_id}")
        return ModelVersionAccess(version=version, model=model, user=user, role=role)

    return dependency


def require_model_version(permission: str) -> ModelVersionAccess:
    """Shorthand for Depends(model_version_access(permission))."""
    return Depends(model_version_access(permission))
