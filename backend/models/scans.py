"""Scans: the image blob, its geometry (never silently changed), and raw plus normalised metadata."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base, JSONType
from backend.models._common import created_at_column


class Scan(Base):
    """One CT volume in a project, with the pointer to its current (head) label version."""

    __tablename__ = "scans"
    __table_args__ = (
        UniqueConstraint("project_id", "case_id", name="uq_scans_project_case"),
        Index("ix_scans_project_site", "project_id", "site"),
        Index("ix_scans_project_phase", "project_id", "phase"),
        Index("ix_scans_project_tumor", "project_id", "tumor"),
        # Covering index for per-site/phase counts (the dashboard): an index-only scan instead of the wide rows.
        Index("ix_scans_project_cover", "project_id", "id", postgresql_include=["site", "phase"]),
        # A scan from a PACS series: found again by its series UID (deduplication, the SEG's references).
        Index("ix_scans_project_source_series", "project_id", "source_series_uid"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    case_id: Mapped[str] = mapped_column(String(200), nullable=False)
    split: Mapped[str | None] = mapped_column(String(16), nullable=True)
    source_format: Mapped[str] = mapped_column(String(16), nullable=False)
    source_name: Mapped[str] = mapped_column(String(500), nullable=False, default="")

    # The volume exactly as served to the viewer: a gzip NIfTI blob, content-addressed.
    image_digest: Mapped[str] = mapped_column(String(64), nullable=False)
    image_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    source_dtype: Mapped[str] = mapped_column(String(16), nullable=False)

    # Geometry: shape, spacing (affine column norms), 4x4 affine, orientation code.
    shape: Mapped[list[int]] = mapped_column(JSONType, nullable=False)
    spacing: Mapped[list[float]] = mapped_column(JSONType, nullable=False)
    affine: Mapped[list[list[float]]] = mapped_column(JSONType, nullable=False)
    orientation: Mapped[str] = mapped_column(String(3), nullable=False)
    slice_count: Mapped[int] = mapped_column(Integer, nullable=False)
    voxel_volume_mm3: Mapped[float] = mapped_column(Float, nullable=False)

    # Normalised metadata: spacing from the header sheet and slice thickness are separate quantities.
    header_spacing: Mapped[list[float] | None] = mapped_column(JSONType, nullable=True)
    slice_thickness: Mapped[float | None] = mapped_column(Float, nullable=True)
    site: Mapped[str | None] = mapped_column(String(100), nullable=True)
    phase: Mapped[str | None] = mapped_column(String(32), nullable=True)
    sex: Mapped[str | None] = mapped_column(String(1), nullable=True)
    age: Mapped[int | None] = mapped_column(Integer, nullable=True)
    manufacturer: Mapped[str | None] = mapped_column(String(100), nullable=True)
    manufacturer_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    tumor: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    lesion_instances: Mapped[int | None] = mapped_column(Integer, nullable=True)
    raw_metadata: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    # The DICOM study and series the volume came from (research UIDs when the project de-identifies its intake).
    source_study_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source_series_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)

    # Not a foreign key on purpose: scans and label_versions point at each other; the labels service keeps
    # it consistent and moves it only by a conditional UPDATE (optimistic concurrency).
    head_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = created_at_column()
