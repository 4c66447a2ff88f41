"""Request and response bodies of the evaluation endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from backend.core.ids import Id


class DetectionIn(BaseModel):
    """Tumour-detection settings (see backend/evaluation/detection.py for the conventions)."""

    lesion_structure: str = "pancreatic_lesion"
    min_volume_mm3: float = Field(default=0.0, ge=0)
    confidence_threshold: float = Field(default=0.5, ge=0, le=1)
    localisation: str = Field(default="overlap", description="'overlap' (any shared voxel) or 'dice'")
    min_dice: float = Field(default=0.1, ge=0, lt=1)


class EvaluationCreate(BaseModel):
    """Evaluate a model version's predictions (or explicit label versions) against approved ground truth."""

    name: str = Field(default="", max_length=200)
    model_version_id: Id | None = None
    model: str | None = Field(default=None, description="a model name: its promoted version is evaluated")
    version_ids: list[Id] | None = Field(default=None, max_length=50_000)
    split: str = Field(default="test", max_length=16, description="a scan split, or 'all'")
    structures: list[str] | None = Field(default=None, max_length=500)
    nsd_tolerance_mm: float | dict[str, float] | None = Field(
        default=None, description="one tolerance in mm, or {structure or 'default': mm}; 1 mm by default"
    )
    detection: DetectionIn | None = None


class EvaluationOut(BaseModel):
    """An evaluation run: what it compares, its job, status and (when finished) the summary."""

    id: int
    project_id: int
    name: str
    status: str
    job_id: int | None
    job_status: str | None
    job_progress: float | None
    model_version_id: int | None
    split: str | None
    structures: list[str]
    cases_planned: int
    nsd_definition: str
    config: dict[str, Any]
    summary: dict[str, Any]
    error: str | None
    created_by: int | None
    created_at: datetime
    finished_at: datetime | None


class EvaluationPage(BaseModel):
    """One page of a project's evaluation runs, newest first (summaries left out)."""

    items: list[EvaluationOut]
    total: int
    page: int
    page_size: int


class CasesOut(BaseModel):
    """Per-case-per-structure metrics (null NSD/HD95 = undefined: an empty mask) and per-case detection."""

    run_id: int
    nsd_definition: str
    empty_policy: str
    cases: list[dict[str, Any]]
    detection: list[dict[str, Any]]


class LeaderboardOut(BaseModel):
    """Model versions ranked per structure by the mean DSC (then NSD) of each one's latest finished run."""

    structure: str | None
    split: str | None
    nsd_definition: str
    rows: list[dict[str, Any]]
