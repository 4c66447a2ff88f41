"""Label versions: immutable, with lineage, holding one chunked binary mask per structure."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Float, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from backend.core.db import Base
from backend.models._common import created_at_column

VERSION_KINDS = ("import", "model", "human", "fusion")


class LabelVersion(Base):
    """An immutable set of per-structure masks of one scan, with its parent, author, kind and message."""

    __tablename__ = "label_versions"
    __table_args__ = (
        CheckConstraint("kind IN ('import', 'model', 'human', 'fusion')", name="kind_known"),
        Index("ix_label_versions_scan_created", "scan_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("label_versions.id", ondelete="RESTRICT"), nullable=True, index=True
    )
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    author_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True
    )
    author_model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="RESTRICT"), nullable=True, index=True
    )
    message: Mapped[str] = mapped_column(String(2000), nullable=False, default="")
    # Set when the version was saved on purpose beside the head (a fork after a conflict).
    is_branch: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Idempotency: a client or job may retry a save with the same key and gets the same version.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    new_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    created_at: Mapped[datetime] = created_at_column()

    structures: Mapped[list[LabelVersionStructure]] = relationship(
        back_populates="version", lazy="selectin", order_by="LabelVersionStructure.structure_id"
    )


class LabelVersionStructure(Base):
    """One structure's mask in one version: the manifest digest (shared by content) and its size."""

    __tablename__ = "label_version_structures"
    __table_args__ = (CheckConstraint("status IN ('present', 'missing')", name="status_known"),)

    version_id: Mapped[int] = mapped_column(ForeignKey("label_versions.id", ondelete="CASCADE"), primary_key=True)
    structure_id: Mapped[int] = mapped_column(
        ForeignKey("structures.id", ondelete="RESTRICT"), primary_key=True, index=True
    )
    # 'missing' records a structure whose file was absent on import: unknown, not empty.
    status: Mapped[str] = mapped_column(String(8), nullable=False)
    manifest_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    voxel_count: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    volume_ml: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    changed: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)

    version: Mapped[LabelVersion] = relationship(back_populates="structures")


class LabelDraft(Base):
    """A user's unsaved edit of a scan, autosaved so a crash, closed tab or expired login loses nothing."""

    __tablename__ = "label_drafts"
    __table_args__ = (UniqueConstraint("scan_id", "user_id", name="uq_label_drafts_scan_user"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    base_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("label_versions.id", ondelete="SET NULL"), nullable=True
    )
    # The client's edit state (JSON: structure, boxes, undo history), content-addressed in the blob store.
    payload_digest: Mapped[str] = mapped_column(String(64), nullable=False)
    payload_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = created_at_column()
