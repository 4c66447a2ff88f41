"""Dashboard aggregates shared by every API process, kept current by database triggers in the writing transaction.

Migration 0011 creates the triggers (PostgreSQL and SQLite) and fills the tables from the existing rows:
a head move, an approval, a new structure row of a chosen version or a deleted scan updates them in the same
transaction, whichever code (or raw SQL) wrote it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Float, ForeignKey, Index, Integer, Numeric, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base, UTCDateTime

# The two version choices the structures view offers: each scan's head, or the version its task approved.
BASES = ("head", "approved")
# The structure_id of the totals row that counts the scans with a chosen version at all (structure ids start at 1).
CHOSEN_SCANS = 0
# Concurrent writers add to different rows of the same total (PostgreSQL: backend pid modulo this, written out as
# `pg_backend_pid() % 4` in migration 0011's triggers), so saves in one project rarely queue on one row; readers
# sum the shards. Measured, 8 writers saving the same structure: 131 saves/s, against 20/s with one row each.
TOTAL_SHARDS = 4


class DashboardVolume(Base):
    """The volume (mL) of one structure, present and non-empty, in the chosen version of a scan (per basis)."""

    __tablename__ = "dashboard_volumes"
    __table_args__ = (
        CheckConstraint("basis IN ('head', 'approved')", name="basis_known"),
        # The medians: an index-only walk from the start of the bin that holds a structure's middle volume.
        Index("ix_dashboard_volumes_structure_basis_bin", "structure_id", "basis", "bin", "volume_ml"),
    )

    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True)
    basis: Mapped[str] = mapped_column(String(8), primary_key=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structures.id", ondelete="CASCADE"), primary_key=True)
    # Denormalised from the scan so the totals trigger groups without a join.
    project_id: Mapped[int] = mapped_column(Integer, nullable=False)
    version_id: Mapped[int] = mapped_column(Integer, nullable=False)
    # Quarter-octave volume bin, monotone in the volume (PostgreSQL: the double's top 14 bits, -1 below 2**-20 mL;
    # SQLite: always 0), so the rank of a bin's first volume is the count of the bins before it.
    bin: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    volume_ml: Mapped[float] = mapped_column(Float, nullable=False)


class DashboardTotal(Base):
    """One shard of the count and volume sum of one volume bin of a structure over a project's chosen versions
    (structure 0, bin 0: the scans with a chosen version); `revision` grows with every change, so a reader knows
    when a median may have moved."""

    __tablename__ = "dashboard_totals"
    __table_args__ = (CheckConstraint("basis IN ('head', 'approved')", name="basis_known"),)

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    basis: Mapped[str] = mapped_column(String(8), primary_key=True)
    structure_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bin: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    scans: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Exact decimal on PostgreSQL: adding and later subtracting the same volume leaves no rounding drift.
    volume_sum: Mapped[float] = mapped_column(Numeric(asdecimal=False), nullable=False, default=0)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class DashboardDecision(Base):
    """A review decision's turnaround (PostgreSQL): seconds since the submission it answers and, for an approval,
    since its review cycle began; recomputed by trigger when the scan's earlier history changes."""

    __tablename__ = "dashboard_decisions"
    __table_args__ = (
        # The window of one project's decisions, index-only (count, newest id and revision sum for readers).
        Index(
            "ix_dashboard_decisions_project_at",
            "project_id",
            "decided_at",
            postgresql_include=["transition_id", "revision"],
        ),
        Index("ix_dashboard_decisions_scan_at", "scan_id", "decided_at", "transition_id"),
    )

    transition_id: Mapped[int] = mapped_column(
        ForeignKey("task_transitions.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    project_id: Mapped[int] = mapped_column(Integer, nullable=False)
    scan_id: Mapped[int] = mapped_column(Integer, nullable=False)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    first_review_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    approval_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    # From a sequence: a recomputed row gets a larger one, so the window's sum moves whenever any row changed.
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
