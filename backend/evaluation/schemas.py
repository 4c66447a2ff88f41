"""Request and response bodies of the evaluation endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from backend.core.ids import Id


class DetectionIn(BaseModel):
    """Tumour-detection settings (see backend/evaluation/detection.py for the conventions)."""

    lesion_structure: str = "pancreatic_lesion"
    min_volume_mm3: float | None = Field(
        default=None,
        ge=0,
        le=1e6,
        description=(
            "predicted lesion components smaller than this (mm³) do not count; null = the project's "
            "settings.evaluation.detection_min_volume_mm3, else 50 mm³ (one stray voxel is no false positive)"
        ),
    )
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
    metric_definition: Literal["deepmind", "lorensen", "monai"] | None = Field(
        default=None,
        description=(
            "how NSD and HD95 measure a surface: 'deepmind' (DeepMind surface-distance, area-weighted surfels), "
            "'lorensen' (closed marching-cubes surfels) or 'monai' (boundary voxels); null = the project's "
            "settings.evaluation.metric_definition, else 'deepmind'"
        ),
    )


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
    metric_definition: str = Field(description="'deepmind', 'lorensen' or 'monai': the definition this run used")
    nsd_definition: str = Field(description="the wording of that definition, as reports state it")
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
    metric_definition: str
    nsd_definition: str
    empty_policy: str
    cases: list[dict[str, Any]]
    detection: list[dict[str, Any]]


class LeaderboardOut(BaseModel):
    """Model versions ranked per structure by the mean DSC (then NSD) of each one's latest finished run."""

    structure: str | None
    split: str | None
    metric_definition: str
    nsd_definition: str
    rows: list[dict[str, Any]]


class EvaluationReportOut(BaseModel):
    """A whole run as one document: config (without the pair list), summary, every case and detection row.

    The summary holds per-structure statistics (`structures`), breakdowns (`by_site`, `by_phase`,
    `by_manufacturer`, `by_lesion_size`), `detection` (sensitivities, specificity, AUC, its config including
    `min_volume_mm3`) and the conventions (`metric_definition`, `nsd_definition`, `empty_policy`,
    `nsd_tolerance_mm`, `hd_percentile`). Cases and detection are empty until the run has succeeded.
    """

    id: int
    name: str
    status: str
    model_version_id: int | None
    metric_definition: str
    nsd_definition: str
    empty_policy: str
    config: dict[str, Any]
    summary: dict[str, Any]
    cases: list[dict[str, Any]]
    detection: list[dict[str, Any]]
    finished_at: str | None


class MetricDefinitionOut(BaseModel):
    """One way of measuring NSD/HD95."""

    name: str
    description: str
    default: bool


class EvaluationOptionsOut(BaseModel):
    """What a lead can choose when starting an evaluation of this project, and the defaults that apply."""

    metric_definitions: list[MetricDefinitionOut]
    defaults: dict[str, Any] = Field(
        description="this project's defaults: nsd_tolerance_mm, detection_min_volume_mm3, metric_definition"
    )
    documented_defaults: dict[str, Any] = Field(description="the platform's defaults, where a project sets none")
    empty_policy: str
    splits: list[dict[str, Any]] = Field(
        description="[{split, scans, approved_scans}] with 'all' last; ground truth = approved versions"
    )
    structures: list[str]
    model_versions: list[dict[str, Any]] = Field(
        description="[{model_version_id, model, version, promoted, predicted_scans}] of versions with predictions"
    )
