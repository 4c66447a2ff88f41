"""Review workflow: one task per scan (state, assignee, lease), transitions, reviews, comments, editing time,
multi-reader sets and QA findings."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    column,
    desc,
)
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base, JSONType, UTCDateTime
from backend.models._common import created_at_column

# Every state a scan's task can be in; the per-project configuration decides which transitions are used.
TASK_STATES = (
    "new",
    "pre_annotated",
    "annotating",
    "submitted",
    "in_review",
    "changes_requested",
    "approved",
    "adjudication",
)
REVIEW_DECISIONS = ("approve", "request_changes")
FINDING_STATUSES = ("open", "resolved", "dismissed")
FINDING_SEVERITIES = ("info", "warning", "error")
READER_SET_STATUSES = ("open", "complete", "adjudication", "fused")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class ScanTask(Base):
    """Where one scan stands in the review workflow: state, review level, assignee, edit lease, key versions."""

    __tablename__ = "scan_tasks"
    __table_args__ = (
        CheckConstraint(_in("state", TASK_STATES), name="state_known"),
        # Worklist and next-task order: priority high to low, ties in import order (scan id); with a state filter too.
        Index("ix_scan_tasks_project_state", "project_id", "state", desc(column("priority")), "scan_id"),
        Index("ix_scan_tasks_project_assignee", "project_id", "assignee_user_id"),
        Index("ix_scan_tasks_project_priority", "project_id", desc(column("priority")), "scan_id"),
        Index("ix_scan_tasks_project_updated", "project_id", "updated_at"),
    )

    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    state: Mapped[str] = mapped_column(String(24), nullable=False, default="new")
    # 0 while not in review; 1..N = which configured review level is due (e.g. 1 junior, 2 senior).
    review_level: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Denormalised from the attention maps (highest structure priority) so the worklist sorts without joins.
    priority: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    assignee_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    # Optional: the structures the assignment covers (scan x structure assignment); null means the whole scan.
    assigned_structure_ids: Mapped[list[int] | None] = mapped_column(JSONType, nullable=True)
    reviewer_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    # The edit lease: only its holder may save while it is live; it expires without a heartbeat.
    lease_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lease_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    submitted_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("label_versions.id", ondelete="SET NULL"), nullable=True
    )
    approved_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("label_versions.id", ondelete="SET NULL"), nullable=True
    )
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Who submitted the version under review (a reviewer may not review their own submission).
    submitted_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Active editing time the editor reports (seconds with input, idle time excluded).
    active_seconds: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    open_findings: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    updated_at: Mapped[datetime] = created_at_column()


class TaskTransition(Base):
    """One state change of a scan's task (also written to the audit log); the dashboard's turnaround source."""

    __tablename__ = "task_transitions"
    __table_args__ = (
        Index("ix_task_transitions_project_at", "project_id", "at"),
        # Covering (index-only) for the dashboard's per-decision look-backs over a scan's history.
        Index("ix_task_transitions_scan_at", "scan_id", "at", "id", postgresql_include=["action", "to_state"]),
        Index("ix_task_transitions_actor_at", "actor_user_id", "at"),
        # The dashboard's decisions/submissions in a time window (turnaround, throughput), index-only.
        Index(
            "ix_task_transitions_project_action_at",
            "project_id",
            "action",
            "at",
            postgresql_include=["scan_id", "id", "to_state", "actor_user_id"],
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    from_state: Mapped[str] = mapped_column(String(24), nullable=False)
    to_state: Mapped[str] = mapped_column(String(24), nullable=False)
    review_level: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    version_id: Mapped[int | None] = mapped_column(ForeignKey("label_versions.id", ondelete="SET NULL"), nullable=True)
    at: Mapped[datetime] = created_at_column()


class Review(Base):
    """A reviewer's decision on a submitted version: approve or request changes, at a review level."""

    __tablename__ = "reviews"
    __table_args__ = (
        CheckConstraint(_in("decision", REVIEW_DECISIONS), name="decision_known"),
        Index("ix_reviews_scan_created", "scan_id", "created_at"),
        Index("ix_reviews_project_created", "project_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False)
    version_id: Mapped[int] = mapped_column(ForeignKey("label_versions.id", ondelete="CASCADE"), nullable=False)
    reviewer_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    review_level: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    decision: Mapped[str] = mapped_column(String(24), nullable=False)
    message: Mapped[str] = mapped_column(String(4000), nullable=False, default="")
    created_at: Mapped[datetime] = created_at_column()


class ReviewComment(Base):
    """A comment pinned to a version, optionally to a structure and a location (slice or voxel)."""

    __tablename__ = "review_comments"
    __table_args__ = (Index("ix_review_comments_scan_created", "scan_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False)
    version_id: Mapped[int | None] = mapped_column(ForeignKey("label_versions.id", ondelete="SET NULL"), nullable=True)
    review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id", ondelete="SET NULL"), nullable=True)
    author_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    structure_id: Mapped[int | None] = mapped_column(ForeignKey("structures.id", ondelete="SET NULL"), nullable=True)
    # Location in voxel indices of the scan: a whole slice (axis 0/1/2 + index) and/or a voxel [i, j, k].
    slice_axis: Mapped[int | None] = mapped_column(Integer, nullable=True)
    slice_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    voxel: Mapped[list[int] | None] = mapped_column(JSONType, nullable=True)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    resolved: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = created_at_column()


class ActivityDaily(Base):
    """Active editing seconds and saves per person per scan per day (throughput without scanning audit rows)."""

    __tablename__ = "activity_daily"
    __table_args__ = (
        UniqueConstraint("user_id", "scan_id", "day", name="uq_activity_daily_user_scan_day"),
        Index("ix_activity_daily_project_day", "project_id", "day"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    day: Mapped[date] = mapped_column(Date, nullable=False)
    active_seconds: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    saves: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class ReaderSet(Base):
    """A multi-reader study of one scan: N blinded annotators, their agreement, adjudication and fusion."""

    __tablename__ = "reader_sets"
    __table_args__ = (
        CheckConstraint(_in("status", READER_SET_STATUSES), name="status_known"),
        Index("ix_reader_sets_project_status", "project_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False, index=True)
    # The version every reader starts from (the AI's or the import); readers' versions are branches on it.
    base_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("label_versions.id", ondelete="SET NULL"), nullable=True
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="open")
    # structure name -> {"dice": mean pairwise, "nsd": ..., "pairs": [...], "below_threshold": bool}
    agreement: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    fusion_method: Mapped[str | None] = mapped_column(String(16), nullable=True)
    fusion_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("label_versions.id", ondelete="SET NULL"), nullable=True
    )
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = created_at_column()
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ReaderSetMember(Base):
    """One reader of a multi-reader set and the version they submitted (hidden from the other readers)."""

    __tablename__ = "reader_set_members"
    __table_args__ = (UniqueConstraint("reader_set_id", "user_id", name="uq_reader_set_members_set_user"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    reader_set_id: Mapped[int] = mapped_column(ForeignKey("reader_sets.id", ondelete="CASCADE"), nullable=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    version_id: Mapped[int | None] = mapped_column(ForeignKey("label_versions.id", ondelete="SET NULL"), nullable=True)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class QAFinding(Base):
    """A QA rule's finding on a version of a scan, shown to reviewers until resolved or dismissed."""

    __tablename__ = "qa_findings"
    __table_args__ = (
        CheckConstraint(_in("status", FINDING_STATUSES), name="status_known"),
        CheckConstraint(_in("severity", FINDING_SEVERITIES), name="severity_known"),
        Index("ix_qa_findings_project_status", "project_id", "status"),
        Index("ix_qa_findings_scan", "scan_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), nullable=False)
    version_id: Mapped[int | None] = mapped_column(ForeignKey("label_versions.id", ondelete="SET NULL"), nullable=True)
    rule: Mapped[str] = mapped_column(String(64), nullable=False)
    structure_id: Mapped[int | None] = mapped_column(ForeignKey("structures.id", ondelete="SET NULL"), nullable=True)
    severity: Mapped[str] = mapped_column(String(8), nullable=False, default="warning")
    message: Mapped[str] = mapped_column(String(2000), nullable=False)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    status: Mapped[str] = mapped_column(String(12), nullable=False, default="open")
    resolved_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = created_at_column()
