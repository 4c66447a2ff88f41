"""Request and response bodies of the dataset import endpoints (what a lead's import page shows)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CaseStatus = Literal["pending", "running", "imported", "skipped", "failed"]


class ImportRequest(BaseModel):
    """A dataset folder on the server to import (PanTS layout: ImageTr/ImageTe, LabelTr/LabelTe, metadata sheet)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"path": "PanTS"}, {"path": "/datasets/PanTS"}]})

    path: str = Field(
        min_length=1,
        max_length=1000,
        description="The folder on the server: relative to the import root (MASKLOOP_IMPORT_ROOT) or absolute. "
        "It must lie under the import root once symlinks are resolved; anything else is refused with 403.",
    )


class CaseCounts(BaseModel):
    """Cases of a run per status. A case whose job ended without importing it (a lost worker, a cancelled job)
    counts as failed."""

    pending: int = Field(description="Queued: waiting for a worker.")
    running: int = Field(description="Being imported by a worker now (or again, after its worker was lost).")
    imported: int = Field(description="Imported by this run: a scan, its `import` label version and QA.")
    skipped: int = Field(description="Already in the project (imported before, or by another upload).")
    failed: int = Field(description="Could not be imported; see each case's file and reason.")
    total: int


class ImportRunOut(BaseModel):
    """An import run: one per project and dataset folder; launching the folder again resumes it."""

    id: int
    project_id: int
    root: str = Field(description="The dataset folder, resolved on the server.")
    status: Literal["running", "finished"] = Field(description="'running' while any case is pending or running.")
    counts: CaseCounts
    launches: int = Field(description="How many times the folder was launched (the first launch and resumes).")
    created_by: int | None
    created_at: datetime
    launched_at: datetime = Field(description="When it was last launched or resumed.")
    finished_at: datetime | None = Field(description="When the last case finished (null while running).")
    eta_s: float | None = Field(description="Seconds left at the pace since the last launch (null until known).")


class ImportLaunchOut(ImportRunOut):
    """The run a launch started or resumed, and what this launch queued."""

    resumed: bool = Field(description="True when the folder already had a run in this project (a resume).")
    queued: int = Field(description="Cases this launch sent to the `cpu` queue (one job each).")
    in_progress: int = Field(description="Cases left to the jobs already importing them.")
    found: int = Field(description="Case folders found in the dataset.")


class ImportCaseOut(BaseModel):
    """One case of a run, as the report lists it."""

    case_id: str
    split: str | None = Field(description="'train' (ImageTr) or 'test' (ImageTe); null without a case folder.")
    status: CaseStatus
    file: str | None = Field(description="For a failed case, the file at fault, relative to the dataset folder.")
    reason: str | None = Field(description="Why it failed or was skipped.")
    scan_id: int | None = Field(description="The scan it became (imported) or already was (skipped).")
    job_id: int | None = Field(description="Its import job (GET /api/jobs/{id}).")
    attempts: int = Field(description="Times a worker started it (more than one after a lost worker or a resume).")
    missing_structures: list[str] = Field(description="Structures without a mask file (recorded as missing).")
    unknown_files: list[str] = Field(description="Files in its segmentations folder that name no structure.")
    timings: dict[str, float] = Field(
        description="Seconds of its last attempt: ct (decoding the CT, alongside the masks), decode (the CT and "
        "the masks), persist (its rows and QA, one transaction), total."
    )
    worker: str | None
    started_at: datetime | None
    finished_at: datetime | None


class ImportReportOut(BaseModel):
    """A run's progress and its report: the counts and one page of its cases (by case id)."""

    run: ImportRunOut
    cases: list[ImportCaseOut]
    total: int = Field(description="Cases matching the status filter.")
    offset: int
    limit: int


class ImportRunPage(BaseModel):
    """A project's import runs, newest launch first."""

    items: list[ImportRunOut]
    total: int
