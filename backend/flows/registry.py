"""Model registry use cases: register a model, change its promotion policy, add a weights version, promote one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.models import Model, ModelVersion, Project, User
from backend.registry import service as registry


def register_model(
    db: Session,
    project: Project,
    *,
    name: str,
    architecture: str,
    structures: Sequence[str],
    config: dict[str, Any] | None = None,
    preprocessing: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
    promotion_policy: str = "manual",
    retrain_every_approvals: int | None = None,
    actor: User,
) -> Model:
    """Register a model of the project (its structures from the project's schema)."""
    model = registry.create_model(
        db,
        project.id,
        name=name,
        architecture=architecture,
        structures=structures,
        config=config,
        preprocessing=preprocessing,
        inference=inference,
        promotion_policy=promotion_policy,
        retrain_every_approvals=retrain_every_approvals,
        actor_user_id=actor.id,
    )
    db.commit()
    return model


def set_promotion_policy(db: Session, model: Model, promotion: dict[str, Any], *, actor: User) -> Model:
    """Change a model's promotion policy (manual, or auto: retrain after every N approvals, promote on a win)."""
    registry.update_promotion(db, model, promotion, actor_user_id=actor.id)
    db.commit()
    return model


def add_version(
    db: Session,
    blobs: BlobStore,
    model: Model,
    *,
    weights: bytes,
    provenance: dict[str, Any],
    validation: dict[str, Any],
    actor: User,
) -> ModelVersion:
    """Register uploaded weights as the model's next version (not promoted)."""
    version = registry.add_version(
        db, blobs, model, weights=weights, provenance=provenance, validation=validation, actor_user_id=actor.id
    )
    db.commit()
    return version


def promote(db: Session, version: ModelVersion, *, actor: User) -> ModelVersion:
    """Promote a version; refused unless it beat the promoted one on their shared held-out set."""
    promoted = registry.promote(db, version, actor.id)
    db.commit()
    return promoted
