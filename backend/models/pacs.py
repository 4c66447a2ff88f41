"""PACS over DICOMweb: a source per project (credentials encrypted), the identifier map of de-identification, and
the series each PACS retrieval became (one scan per project and SeriesInstanceUID)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base, UTCDateTime
from backend.models._common import created_at_column, utcnow

PACS_IDENTITY_KINDS = ("patient", "study", "series")


class PacsSource(Base):
    """A project's DICOMweb server: base URL (its host on the admin's allow-list), optional HTTP basic credentials
    (the password Fernet-encrypted, never returned), and whether intake and exports are de-identified."""

    __tablename__ = "pacs_sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, unique=True)
    base_url: Mapped[str] = mapped_column(String(1000), nullable=False)
    username: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Fernet token of the password (settings.pacs_credentials_key); None: no password.
    secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    deidentify: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Keys the research identifiers (HMAC): one original identifier always becomes the same research one.
    salt: Mapped[str] = mapped_column(String(64), nullable=False)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class PacsIdentity(Base):
    """One original identifier (patient id, study or series UID) and the research identifier that replaced it on
    intake into a de-identifying project; server-side only, readable by the project's leads."""

    __tablename__ = "pacs_identities"
    __table_args__ = (
        UniqueConstraint("project_id", "kind", "original", name="uq_pacs_identities_project_kind_original"),
        CheckConstraint("kind IN ('patient', 'study', 'series')", name="kind_known"),
        Index("ix_pacs_identities_project_research", "project_id", "research"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    original: Mapped[str] = mapped_column(String(200), nullable=False)
    research: Mapped[str] = mapped_column(String(200), nullable=False)
    created_at: Mapped[datetime] = created_at_column()


class PacsSeries(Base):
    """A series retrieved from the PACS into a scan: the unique (project, series UID) keeps a series from being
    imported twice, however many jobs race for it. The UIDs are the scan's (research ones when de-identified)."""

    __tablename__ = "pacs_series"
    __table_args__ = (UniqueConstraint("project_id", "series_uid", name="uq_pacs_series_project_series"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False, unique=True)
    study_uid: Mapped[str] = mapped_column(String(64), nullable=False)
    series_uid: Mapped[str] = mapped_column(String(64), nullable=False)
    instances: Mapped[int] = mapped_column(Integer, nullable=False)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = created_at_column()
