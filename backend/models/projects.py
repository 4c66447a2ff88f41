"""Projects, memberships with roles, and label schemas with their ordered structures."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from backend.core.db import Base, JSONType
from backend.models._common import created_at_column

PROJECT_ROLES = ("admin", "lead", "annotator", "reviewer", "viewer")


class Project(Base):
    """A body of scans annotated under one label schema."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(String(2000), nullable=False, default="")
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    created_at: Mapped[datetime] = created_at_column()

    label_schema: Mapped[LabelSchema] = relationship(back_populates="project", uselist=False)


class Membership(Base):
    """A user's role in a project."""

    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("project_id", "user_id", name="uq_memberships_project_user"),
        CheckConstraint("role IN ('admin', 'lead', 'annotator', 'reviewer', 'viewer')", name="role_known"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = created_at_column()


class LabelSchema(Base):
    """The ordered list of structures a project annotates."""

    __tablename__ = "label_schemas"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, unique=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    created_at: Mapped[datetime] = created_at_column()

    project: Mapped[Project] = relationship(back_populates="label_schema")
    structures: Mapped[list[Structure]] = relationship(
        back_populates="label_schema", order_by="Structure.position", lazy="selectin"
    )


class Structure(Base):
    """One anatomical structure of a schema: its label value, name, colour, group and containing parent."""

    __tablename__ = "structures"
    __table_args__ = (
        UniqueConstraint("schema_id", "name", name="uq_structures_schema_name"),
        UniqueConstraint("schema_id", "label_value", name="uq_structures_schema_label_value"),
        CheckConstraint("label_value > 0 AND label_value < 65536", name="label_value_range"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    schema_id: Mapped[int] = mapped_column(ForeignKey("label_schemas.id", ondelete="CASCADE"), nullable=False)
    label_value: Mapped[int] = mapped_column(Integer, nullable=False)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    color: Mapped[str] = mapped_column(String(7), nullable=False)
    group: Mapped[str] = mapped_column(String(50), nullable=False, default="")
    inside: Mapped[str | None] = mapped_column(String(100), nullable=True)
    aliases: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    # The structure's DICOM SEG code ({"category", "type", "modifier"?, "region"?}; backend.imaging.dicom_codes);
    # None: coded from the standard table by name, else with the documented private scheme.
    # Deferred: loaded when first read (structures_of(..., with_codes=True) loads it with the rows), so code that
    # never reads it also runs on databases from before the column (the migration tests seed old revisions).
    code: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True, deferred=True)

    label_schema: Mapped[LabelSchema] = relationship(back_populates="structures")
