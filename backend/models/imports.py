"""Dataset imports: a run per (project, dataset folder) and one row per case, each case imported by its own job."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base, JSONType, UTCDateTime
from backend.models._common import created_at_column, utcnow

IMPORT_CASE_STATUSES = ("pending", "running", "imported", "skipped", "failed")


class ImportRun(Base):
    """The import of one dataset folder into a project; launching the same folder again resumes this run."""

    __tablename__ = "import_runs"
    __table_args__ = (UniqueConstraint("project_id", "root", name="uq_import_runs_project_root"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    # The dataset folder, resolved (absolute, no symlinks): the workers read the same path.
    root: Mapped[str] = mapped_column(String(1000), nullable=False)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = created_at_column()
    # When it was last launched or resumed, and how many times.
    launched_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    launches: Mapped[int] = mapped_column(Integer, nullable=False, default=1)


class ImportCase(Base):
    """One case of a run: pending → running → imported | skipped | failed (with the file at fault and why)."""

    __tablename__ = "import_cases"
    __table_args__ = (
        UniqueConstraint("run_id", "case_id", name="uq_import_cases_run_case"),
        CheckConstraint("status IN ('pending', 'running', 'imported', 'skipped', 'failed')", name="status_known"),
        Index("ix_import_cases_run_status", "run_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("import_runs.id", ondelete="CASCADE"), nullable=False)
    case_id: Mapped[str] = mapped_column(String(200), nullable=False)
    # 'train' (ImageTr) or 'test' (ImageTe); None for a metadata row without a case folder.
    split: Mapped[str | None] = mapped_column(String(16), nullable=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    file: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The case's metadata row until it is imported (the scan keeps it then; the copy here is cleared).
    raw_metadata: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    scan_id: Mapped[int | None] = mapped_column(ForeignKey("scans.id", ondelete="SET NULL"), nullable=True, index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # What an imported case lacked: {"missing_structures": [...], "unknown_files": [...]} (QA flags them too).
    notes: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    # Seconds of the last attempt: ct (decoding the CT, alongside the masks), decode (CT and masks), persist, total.
    timings: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
