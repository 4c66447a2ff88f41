"""Queued work: pre-annotation, attention, training (and later import/export), with status and progress."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base, JSONType, UTCDateTime
from backend.models._common import created_at_column

JOB_KINDS = ("preannotate", "attention", "train", "import", "export", "evaluate", "fuse", "pacs", "check_weights")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
JOB_QUEUES = ("gpu", "cpu")


class Job(Base):
    """One unit of queued work; the worker claims it by a conditional UPDATE and reports progress here."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('preannotate', 'attention', 'train', 'import', 'export', 'evaluate', 'fuse', 'pacs', "
            "'check_weights')",
            name="kind_known",
        ),
        CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="status_known"),
        CheckConstraint("queue IN ('gpu', 'cpu')", name="queue_known"),
        Index("ix_jobs_queue_status_id", "queue", "status", "id"),
        Index("ix_jobs_project_created", "project_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    queue: Mapped[str] = mapped_column(String(8), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    message: Mapped[str] = mapped_column(String(500), nullable=False, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    scan_id: Mapped[int | None] = mapped_column(ForeignKey("scans.id", ondelete="SET NULL"), nullable=True, index=True)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True
    )
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = created_at_column()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # When its message last went to the broker: the reaper re-sends a queued job whose message was lost.
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
