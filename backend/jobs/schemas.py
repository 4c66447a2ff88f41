"""Request and response bodies of the job endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, StrictBool

from backend.core.ids import Id


class ScanFilterIn(BaseModel):
    """A metadata filter selecting scans (same fields as the scan list)."""

    site: str | None = None
    phase: str | None = None
    sex: str | None = None
    tumor: StrictBool | None = None
    manufacturer: str | None = None
    split: str | None = None
    age_min: int | None = None
    age_max: int | None = None
    q: str | None = None


class PreannotateRequest(BaseModel):
    """Pre-annotate one scan, a filtered set, or the whole project with a model (its promoted version)."""

    model: str | None = None
    model_version_id: Id | None = None
    scan_ids: list[Id] | None = Field(default=None, max_length=50_000)
    filter: ScanFilterIn | None = None
    all: StrictBool = False


class AttentionRequest(BaseModel):
    """Compute attention maps from the newest predictions of ≥ 2 model versions."""

    scan_ids: list[Id] | None = Field(default=None, max_length=50_000)
    filter: ScanFilterIn | None = None
    all: StrictBool = False
    model_version_ids: list[Id] | None = None


class TrainRequest(BaseModel):
    """Fine-tune a model on label versions (default: the project's approved versions) with a held-out split."""

    label_version_ids: list[Id] | None = Field(default=None, min_length=2, max_length=50_000)
    epochs: int = Field(default=20, ge=1, le=1000)
    heldout_fraction: float = Field(default=0.25, gt=0, lt=1)
    seed: int = 0
    init: str = Field(default="promoted", description="'promoted': fine-tune the promoted weights; 'scratch'")


class FailRequest(BaseModel):
    """Why a lead ends a stuck job as failed (kept in the job's error and the audit log)."""

    reason: str | None = Field(default=None, max_length=2000)


class JobOut(BaseModel):
    """A job: status, progress, position in its queue, timings, error and results."""

    id: int
    project_id: int
    kind: str
    queue: str
    status: str
    progress: float
    message: str
    queue_position: int | None
    error: str | None
    params: dict[str, Any]
    result: dict[str, Any]
    scan_id: int | None
    model_version_id: int | None
    created_by: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    attempts: int
    worker: str | None
    cancel_requested: bool
    wait_seconds: float | None
    run_seconds: float | None


class JobPage(BaseModel):
    """One page of jobs, newest first."""

    items: list[JobOut]
    total: int
    page: int
    page_size: int
