"""Request and response bodies of the multi-reader and QA endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from backend.core.ids import Id
from backend.jobs.schemas import JobOut


class ReaderSetCreate(BaseModel):
    """Which scans (a list, or a seeded random fraction of the project) and which readers (ids, or a count);
    what is left out comes from the project's `workflow.multi_reader` setting (sample_fraction, readers, seed)."""

    scan_ids: list[Id] | None = Field(default=None, min_length=1, max_length=10_000)
    sample_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    readers: list[Id] | None = Field(default=None, min_length=2, max_length=20)
    n_readers: int | None = Field(default=None, ge=2, le=20)
    seed: int = 0

    @model_validator(mode="after")
    def _one_of_each(self) -> ReaderSetCreate:
        """At most one way to choose the scans and one way to choose the readers (the rest: project settings)."""
        if self.scan_ids is not None and self.sample_fraction is not None:
            raise ValueError("give either scan_ids or sample_fraction, not both")
        if self.readers is not None and self.n_readers is not None:
            raise ValueError("give either readers (user ids) or n_readers, not both")
        return self


class ReaderSubmit(BaseModel):
    """The reader's version to submit to the set."""

    version_id: Id


class FuseRequest(BaseModel):
    """How to fuse the readers' masks."""

    method: Literal["majority", "staple"] = "majority"


class ReaderOut(BaseModel):
    """One reader of a set; `version_id` is hidden (null) from other readers while the set is open."""

    user_id: int
    display_name: str
    submitted: bool
    submitted_at: datetime | None
    version_id: int | None


class ReaderSetOut(BaseModel):
    """A multi-reader set with its readers, status and (once complete) per-structure agreement."""

    id: int
    project_id: int
    scan_id: int
    case_id: str
    base_version_id: int | None
    status: str
    members: list[ReaderOut]
    agreement: dict[str, Any] | None
    below_threshold: list[str]
    fusion_method: str | None
    fusion_version_id: int | None
    fusion_job: JobOut | None = Field(
        default=None, description="the newest fusion job of the set (queued, running or final), if any"
    )
    created_by: int | None
    created_at: datetime
    completed_at: datetime | None


class FuseAccepted(BaseModel):
    """A queued fusion: the `fuse` job (cpu queue) and the reader set, fused when the job succeeds."""

    job: JobOut
    reader_set: ReaderSetOut


class QARunRequest(BaseModel):
    """Run QA on one version of the scan (default: its head)."""

    version_id: Id | None = None


class FindingOut(BaseModel):
    """A QA rule's finding on a version of a scan."""

    id: int
    project_id: int
    scan_id: int
    case_id: str
    version_id: int | None
    rule: str
    structure: str | None
    severity: str
    message: str
    details: dict[str, Any]
    status: str
    resolved_by: int | None
    created_at: datetime


class FindingPage(BaseModel):
    """One page of a project's findings."""

    items: list[FindingOut]
    total: int
    page: int
    page_size: int


class FindingUpdate(BaseModel):
    """Close (or reopen) a finding."""

    status: Literal["resolved", "dismissed", "open"]
