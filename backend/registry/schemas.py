"""Request and response bodies of the model registry and attention endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ModelCreate(BaseModel):
    """A new model: architecture and config, structures, preprocessing and sliding-window settings."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    architecture: str
    structures: list[str] = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    inference: dict[str, Any] = Field(default_factory=dict)
    promotion_policy: str = "manual"
    retrain_every_approvals: int | None = Field(default=None, ge=1)


class ModelUpdate(BaseModel):
    """A new promotion policy: ``{"promotion": {"policy": "manual"|"auto", "retrain_every_approvals": N}}``."""

    promotion: dict[str, Any]


class ModelVersionOut(BaseModel):
    """One weight version: hash, provenance and held-out metrics."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    model_id: int
    number: int
    weights_digest: str | None
    weights_bytes: int
    provenance: dict[str, Any]
    validation: dict[str, Any]
    is_promoted: bool
    weights_status: str = Field(
        description="'valid' (checked: loads into the architecture and runs), 'pending' (a worker is checking it; "
        "not promotable yet) or 'invalid' (refused; the reason is in weights_check)"
    )
    weights_check: dict[str, Any] = Field(description="the check's job_id, reason, checked_at and seconds")
    created_at: datetime


class ModelOut(BaseModel):
    """A registered model with its promoted version."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    name: str
    architecture: str
    config: dict[str, Any]
    structures: list[str]
    preprocessing: dict[str, Any]
    inference: dict[str, Any]
    promotion_policy: str
    retrain_every_approvals: int | None
    created_at: datetime
    promoted_version: ModelVersionOut | None = None


class TrainingRoundOut(BaseModel):
    """One retraining round: data, held-out comparison, promotion decision, AI-vs-final Dice."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    model_id: int
    job_id: int | None
    new_model_version_id: int | None
    previous_model_version_id: int | None
    train_versions: int
    heldout_versions: int
    scans_revised: int
    ai_vs_final_dice: dict[str, Any]
    heldout_new: dict[str, Any]
    heldout_previous: dict[str, Any]
    promoted: bool
    decision: str
    gate: dict[str, Any] = Field(
        description="the promotion gate as evaluated: passed, heldout_scans / min_heldout_scans, max_structure_drop, "
        "mean_new / mean_previous, structures [{structure, previous, new, delta, ok}] and the failures"
    )
    created_at: datetime


class PriorityOut(BaseModel):
    """One (scan, structure) pair of the review priority list."""

    scan_id: int
    case_id: str
    structure: str
    priority: float
    attention_voxels: int
    inconsistency_voxels: int
    uncertainty_voxels: int
    overlap_voxels: int
    model_version_ids: list[int]


class PriorityPage(BaseModel):
    """One page of the ranked priority list."""

    items: list[PriorityOut]
    total: int
    page: int
    page_size: int


class ScanPriorityOut(BaseModel):
    """A scan ranked by its total attention."""

    scan_id: int
    case_id: str
    score: float


class PredictionOut(BaseModel):
    """A model version's prediction of a scan and where its soft maps are."""

    id: int
    job_id: int
    scan_id: int
    model_version_id: int
    label_version_id: int
    structures: list[str]
    created_at: datetime


class RollbackIn(BaseModel):
    """Why a lead makes an earlier version the promoted one again (kept with the decision)."""

    reason: str = Field(min_length=1, max_length=2000)


class PromoteIn(BaseModel):
    """An optional note kept with the promotion decision."""

    reason: str = Field(default="", max_length=2000)


class ModelDecisionOut(BaseModel):
    """A promotion or rollback: who, from which version to which, why, and the gate that allowed it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    model_id: int
    kind: str = Field(description="'promote' or 'rollback'")
    from_version_id: int | None
    to_version_id: int | None
    training_round_id: int | None
    actor_user_id: int | None = Field(description="null: the platform (auto policy, bundled model)")
    reason: str
    gate: dict[str, Any]
    created_at: datetime
