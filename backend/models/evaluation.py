"""Evaluation runs: a model's (or explicit versions') masks scored against approved ground truth."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base, JSONType, UTCDateTime
from backend.models._common import created_at_column

EVALUATION_STATUSES = ("queued", "running", "succeeded", "failed")


class EvaluationRun(Base):
    """One evaluation: what was compared (config), its job, status and the summary of the results."""

    __tablename__ = "evaluation_runs"
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed')", name="status_known"),
        Index("ix_evaluation_runs_project_created", "project_id", "created_at"),
        Index("ix_evaluation_runs_model_version", "model_version_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    # split, structures, NSD tolerances, detection settings and the (scan, gt version, pred version) pairs.
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True
    )
    summary: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = created_at_column()
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class EvaluationCase(Base):
    """The metrics of one structure of one scan in a run (NSD/HD95 null = undefined: an empty mask)."""

    __tablename__ = "evaluation_cases"
    __table_args__ = (
        UniqueConstraint("run_id", "scan_id", "structure_id", name="uq_evaluation_cases_run_scan_structure"),
        Index("ix_evaluation_cases_run_structure", "run_id", "structure_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("evaluation_runs.id", ondelete="CASCADE"), nullable=False)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False, index=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structures.id", ondelete="CASCADE"), nullable=False)
    gt_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("label_versions.id", ondelete="SET NULL"), nullable=True
    )
    pred_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("label_versions.id", ondelete="SET NULL"), nullable=True
    )
    dsc: Mapped[float] = mapped_column(Float, nullable=False)
    nsd: Mapped[float | None] = mapped_column(Float, nullable=True)
    hd95: Mapped[float | None] = mapped_column(Float, nullable=True)
    nsd_tolerance_mm: Mapped[float] = mapped_column(Float, nullable=False)
    gt_ml: Mapped[float] = mapped_column(Float, nullable=False)
    pred_ml: Mapped[float] = mapped_column(Float, nullable=False)
    volume_error_ml: Mapped[float] = mapped_column(Float, nullable=False)
    volume_error_rel: Mapped[float | None] = mapped_column(Float, nullable=True)
    gt_empty: Mapped[bool] = mapped_column(Boolean, nullable=False)
    pred_empty: Mapped[bool] = mapped_column(Boolean, nullable=False)
    surface_status: Mapped[str] = mapped_column(String(16), nullable=False)


class EvaluationDetection(Base):
    """Tumour detection outcome of one scan in a run (lesion components, confidence, matched GT lesions)."""

    __tablename__ = "evaluation_detections"
    __table_args__ = (UniqueConstraint("run_id", "scan_id", name="uq_evaluation_detections_run_scan"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("evaluation_runs.id", ondelete="CASCADE"), nullable=False)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False, index=True)
    tumour: Mapped[bool] = mapped_column(Boolean, nullable=False)
    detected: Mapped[bool] = mapped_column(Boolean, nullable=False)
    confidence: Mapped[float] = mapped_column(Float, nullable=False)
    confidence_source: Mapped[str] = mapped_column(String(16), nullable=False)
    predicted_components: Mapped[int] = mapped_column(Integer, nullable=False)
    false_positive_components: Mapped[int] = mapped_column(Integer, nullable=False)
    predicted_volume_ml: Mapped[float] = mapped_column(Float, nullable=False)
    # [{"volume_ml", "bucket", "detected", "dice"}] per ground-truth lesion component.
    gt_lesions: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False, default=list)
