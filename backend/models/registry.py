"""Model registry: models (architecture, structures, preprocessing) and their weight versions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base, JSONType
from backend.models._common import created_at_column


class Model(Base):
    """A segmentation model of a project: what it predicts and how its input is prepared."""

    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_models_project_name"),
        CheckConstraint("promotion_policy IN ('manual', 'auto')", name="promotion_policy_known"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    # A name from the architecture catalogue (backend.core.inference_rules, extended by predictor registrations):
    # data checked by the API, not a CHECK constraint, so a new architecture needs no migration.
    architecture: Mapped[str] = mapped_column(String(32), nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    structures: Mapped[list[str]] = mapped_column(JSONType, nullable=False)
    preprocessing: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    inference: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    promotion_policy: Mapped[str] = mapped_column(String(16), nullable=False, default="manual")
    # With the 'auto' policy: retrain after this many newly approved versions (the review workflow triggers it).
    retrain_every_approvals: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = created_at_column()


class ModelVersion(Base):
    """One set of weights of a model, with its provenance and held-out validation metrics."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "number", name="uq_model_versions_model_number"),
        CheckConstraint("weights_status IN ('pending', 'valid', 'invalid')", name="weights_status_known"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True)
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    # sha256 of the weights file in the blob store; None for weightless (classical) models.
    weights_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    weights_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    validation: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    is_promoted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Uploaded weights are 'pending' until a worker loaded them into the architecture and ran one forward pass
    # ('valid'), or refused them ('invalid', the reason in weights_check); weights this platform produced (its
    # training, the bundled files) and weightless versions are 'valid' at once. Only 'valid' ones are promoted.
    # Server defaults only (no Python default): an insert that does not name them leaves them out, as rows written
    # by code older than the columns did.
    weights_status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="valid")
    # {"job_id": id, "reason": "...", "checked_at": iso, "seconds": s} of the check, when there was one.
    weights_check: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, server_default=text("'{}'"))
    created_at: Mapped[datetime] = created_at_column()


DECISION_KINDS = ("promote", "rollback")


class ModelDecision(Base):
    """Who made which version a model's promoted one, why, and (for a promotion) the held-out comparison."""

    __tablename__ = "model_decisions"
    __table_args__ = (
        CheckConstraint("kind IN ('promote', 'rollback')", name="kind_known"),
        Index("ix_model_decisions_model_id", "model_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    from_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True
    )
    to_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True
    )
    training_round_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_rounds.id", ondelete="SET NULL"), nullable=True
    )
    # None: the platform (an auto-policy promotion, a bundled model).
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    # The promotion gate as evaluated (per-structure old/new Dice, held-out size, margin), when there was one.
    gate: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    created_at: Mapped[datetime] = created_at_column()
