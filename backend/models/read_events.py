"""The append-only read log: who opened which scan volume, mask or export, kept apart from write events."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base
from backend.models._common import created_at_column

READ_KINDS = ("volume", "mask", "combined", "export", "attention", "prediction")


class ReadEvent(Base):
    """One served read of patient data: who, when, from where, which scan and object (never updated or deleted)."""

    __tablename__ = "read_events"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('volume', 'mask', 'combined', 'export', 'attention', 'prediction')", name="kind_known"
        ),
        Index("ix_read_events_project_at", "project_id", "at"),
        Index("ix_read_events_scan_at", "scan_id", "at"),
        Index("ix_read_events_user_at", "user_id", "at"),
    )

    # BIGINT on PostgreSQL (a busy viewer reads often); SQLite needs INTEGER for its rowid primary key.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    at: Mapped[datetime] = created_at_column()
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    # No foreign key (as in audit_events): the record of a read outlives the scan.
    scan_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    # What was read: the scan, label version or export job id, and the structure/paint order where it applies.
    object_id: Mapped[str] = mapped_column(String(64), nullable=False)
    detail: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    # The content served (image, manifest or archive sha256), so a read names exact bytes.
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # A 304 answer: the browser already held these bytes and showed them again.
    not_modified: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
