"""Model lookups with the caller's project role checked (outsiders see 404)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from backend.auth.access import ObjectAccess, object_access
from backend.models import Model, ModelVersion, User
from backend.registry import service


@dataclass(frozen=True)
class ModelAccess:
    """A model the caller may act on."""

    model: Model
    user: User
    role: str


@dataclass(frozen=True)
class ModelVersionAccess:
    """A model version the caller may act on, with its model."""

    version: ModelVersion
    model: Model
    user: User
    role: str


def _version_with_model(db: Session, version_id: int) -> tuple[ModelVersion, Model]:
    """A model version and the model it belongs to (whose project decides access)."""
    version = service.get_model_version(db, version_id)
    return version, service.get_model(db, version.model_id)


model_access: ObjectAccess[Model, ModelAccess] = object_access(
    service.get_model, lambda model: model.project_id, "model", param="model_id", grant=ModelAccess
)
model_version_access: ObjectAccess[tuple[ModelVersion, Model], ModelVersionAccess] = object_access(
    _version_with_model,
    lambda loaded: loaded[1].project_id,
    "model version",
    param="version_id",
    grant=lambda loaded, user, role: ModelVersionAccess(*loaded, user, role),
)


def require_model(permission: str) -> ModelAccess:
    """Shorthand for Depends(model_access(permission))."""
    return model_access.require(permission)


def require_model_version(permission: str) -> ModelVersionAccess:
    """Shorthand for Depends(model_version_access(permission))."""
    return model_version_access.require(permission)
