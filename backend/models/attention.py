"""Model outputs kept for review: soft predictions, attention maps with priorities, and training rounds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base, JSONType
from backend.models._common import created_at_column


class Prediction(Base):
    """A model version's prediction of a scan: the label version it wrote and its uint8 probability/entropy maps."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("job_id", name="uq_predictions_job"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False, index=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), nullable=False, index=True
    )
    label_version_id: Mapped[int] = mapped_column(ForeignKey("label_versions.id", ondelete="CASCADE"), nullable=False)
    # structure name -> {"probability": digest, "entropy": digest}: uint8-quantised .nii.gz blobs.
    maps: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    created_at: Mapped[datetime] = created_at_column()


class AttentionMap(Base):
    """Where the models disagree or doubt, for one structure of one scan, and how urgent a human look is."""

    __tablename__ = "attention_maps"
    __table_args__ = (
        UniqueConstraint("scan_id", "structure_id", name="uq_attention_maps_scan_structure"),
        Index("ix_attention_maps_project_priority", "project_id", "priority"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structures.id", ondelete="CASCADE"), nullable=False)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)
    manifest_digest: Mapped[str] = mapped_column(String(64), nullable=False)
    attention_voxels: Mapped[int] = mapped_column(BigInteger, nullable=False)
    inconsistency_voxels: Mapped[int] = mapped_column(BigInteger, nullable=False)
    uncertainty_voxels: Mapped[int] = mapped_column(BigInteger, nullable=False)
    overlap_voxels: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # Attention volume normalised by slice count (the AbdomenAtlas ranking key).
    priority: Mapped[float] = mapped_column(Float, nullable=False)
    model_version_ids: Mapped[list[int]] = mapped_column(JSONType, nullable=False)
    computed_at: Mapped[datetime] = created_at_column()


class TrainingRound(Base):
    """One retraining round: data used, the new weights, held-out comparison, promotion decision."""

    __tablename__ = "training_rounds"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)
    new_model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True
    )
    previous_model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True
    )
    train_versions: Mapped[int] = mapped_column(Integer, nullable=False)
    heldout_versions: Mapped[int] = mapped_column(Integer, nullable=False)
    scans_revised: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    ai_vs_final_dice: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    heldout_new: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    heldout_previous: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    promoted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    decision: Mapped[str] = mapped_column(String(500), nullable=False, default="")
    # The promotion gate as evaluated: held-out size against the minimum, each structure's old/new Dice against
    # the margin, the means, and the reasons it failed (backend.registry.service.promotion).
    gate: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, server_default=text("'{}'"))
    created_at: Mapped[datetime] = created_at_column()


class ApprovalDice(Base):
    """At an approval: the Dice of one structure a model version predicted on the scan against the approved mask.

    Written by the approving transaction for every model version that pre-annotated the scan, only for the
    structures it predicted (not those its label version inherited from its parent); a later approval of the same
    scan replaces the rows. The dashboard's AI-vs-final chart reads them.
    """

    __tablename__ = "approval_dice"
    __table_args__ = (
        UniqueConstraint("scan_id", "model_version_id", "structure_id", name="uq_approval_dice_scan_version_structure"),
        Index("ix_approval_dice_model_version", "model_version_id", "structure_id"),
        Index("ix_approval_dice_project", "project_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), nullable=False)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structures.id", ondelete="CASCADE"), nullable=False)
    draft_version_id: Mapped[int] = mapped_column(ForeignKey("label_versions.id", ondelete="CASCADE"), nullable=False)
    final_version_id: Mapped[int] = mapped_column(ForeignKey("label_versions.id", ondelete="CASCADE"), nullable=False)
    dice: Mapped[float] = mapped_column(Float, nullable=False)
    created_at: Mapped[datetime] = created_at_column()
