"""Request and response bodies of the review workflow endpoints (tasks, leases, assignments, reviews, comments).

`TaskOut.allowed_actions` lists what the caller may do now: the transitions `start`, `submit`, `start_review`,
`approve`, `request_changes`, `reopen`, `adjudicate`, `resolve`, and `edit` (save labels), `lease` (take or renew
the edit lease), `release_lease`, `assign` (leads), `comment`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, StrictBool

from backend.core.ids import Id


class UserRef(BaseModel):
    """A person named on a task."""

    id: int
    username: str


class LeaseOut(BaseModel):
    """The live edit lease of a task."""

    user_id: int
    username: str
    expires_at: datetime


class TaskOut(BaseModel):
    """Where a scan stands in the review workflow, and what the caller may do with it."""

    scan_id: int
    case_id: str
    state: str
    review_level: int
    review_level_name: str | None
    review_levels: list[str]
    priority: float
    assignee: UserRef | None
    assigned_structure_ids: list[int] | None
    reviewer: UserRef | None
    lease: LeaseOut | None
    site: str | None
    phase: str | None
    tumor: bool | None
    open_findings: int
    active_seconds: float
    head_version_id: int | None
    submitted_version_id: int | None
    submitted_by: int | None
    approved_version_id: int | None
    submitted_at: datetime | None
    approved_at: datetime | None
    updated_at: datetime
    allowed_actions: list[str]


class TaskPage(BaseModel):
    """One page of the worklist."""

    items: list[TaskOut]
    total: int
    page: int
    page_size: int
    next_cursor: str | None = Field(
        default=None, description="pass as `after` for the next page (keyset paging); null on the last page"
    )


class TransitionIn(BaseModel):
    """A workflow action on a scan's task."""

    action: str = Field(min_length=1, max_length=32)
    version_id: Id | None = None
    message: str = Field(default="", max_length=4000)


class TransitionOut(BaseModel):
    """One step of a task's history."""

    id: int
    action: str
    from_state: str
    to_state: str
    review_level: int
    actor: UserRef | None
    version_id: int | None
    at: datetime


class NextTaskIn(BaseModel):
    """Which kind of work the caller wants next."""

    kind: Literal["annotate", "review"] = "annotate"


class AssignmentIn(BaseModel):
    """Assign scans (optionally only some structures) to a user; a null user unassigns."""

    scan_ids: list[Id] = Field(min_length=1, max_length=50000)
    user_id: Id | None
    structure_ids: list[Id] | None = Field(default=None, max_length=1000)
    role: Literal["annotator", "reviewer"] = "annotator"


class AssignmentOut(BaseModel):
    """How many tasks an assignment changed."""

    updated: int


class CommentIn(BaseModel):
    """A comment, optionally pinned to a version, a structure, a slice (axis + index) and/or a voxel."""

    version_id: Id | None = None
    structure: str | None = Field(default=None, max_length=100)
    slice_axis: Literal[0, 1, 2] | None = None
    slice_index: int | None = Field(default=None, ge=0)
    voxel: list[int] | None = Field(default=None, min_length=3, max_length=3)
    text: str = Field(min_length=1, max_length=10000)


class CommentOut(BaseModel):
    """A stored comment."""

    id: int
    scan_id: int
    version_id: int | None
    review_id: int | None
    author: UserRef | None
    structure: str | None
    slice_axis: int | None
    slice_index: int | None
    voxel: list[int] | None
    text: str
    resolved: bool
    created_at: datetime


class CommentPatch(BaseModel):
    """Resolve (or re-open) a comment."""

    resolved: StrictBool


class ReviewIn(BaseModel):
    """A review decision on the scan's head version at the task's current review level."""

    version_id: Id
    decision: Literal["approve", "request_changes"]
    message: str = Field(default="", max_length=4000)
    comments: list[CommentIn] = Field(default_factory=list, max_length=200)


class ReviewOut(BaseModel):
    """A stored review with its comments (and, on creation, the task after it)."""

    id: int
    scan_id: int
    version_id: int
    reviewer: UserRef | None
    review_level: int
    review_level_name: str | None
    decision: str
    message: str
    created_at: datetime
    comments: list[CommentOut]
    task: TaskOut | None = None


class ActivityIn(BaseModel):
    """Active editing seconds the editor measured since its last report."""

    active_seconds: float = Field(gt=0, le=600)


class ActivityOut(BaseModel):
    """The task's total active editing time after the report."""

    scan_id: int
    active_seconds: float
