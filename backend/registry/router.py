"""Model registry endpoints, predictions, attention maps and the review priority list."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request, UploadFile, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from backend.auth.dependencies import Blobs, DbSession, SettingsDep
from backend.core import uploads
from backend.core.errors import InvalidInput
from backend.core.ids import PathId
from backend.flows import reads
from backend.flows import registry as registry_flows
from backend.imaging import chunks, nifti
from backend.models import Model
from backend.projects import service as projects
from backend.projects.dependencies import ProjectAccess, require_project
from backend.registry import service
from backend.registry.dependencies import ModelAccess, ModelVersionAccess, require_model, require_model_version
from backend.registry.schemas import (
    ModelCreate,
    ModelDecisionOut,
    ModelOut,
    ModelUpdate,
    ModelVersionOut,
    PredictionOut,
    PriorityOut,
    PriorityPage,
    PromoteIn,
    RollbackIn,
    ScanPriorityOut,
    TrainingRoundOut,
)
from backend.scans import service as scans
from backend.scans.dependencies import ScanAccess, require_scan

router = APIRouter(tags=["models"])


def model_out(db: DbSession, model: Model) -> ModelOut:
    """Serialise a model with its promoted version."""
    out = ModelOut.model_validate(model)
    promoted = service.promoted_version(db, model)
    out.promoted_version = ModelVersionOut.model_validate(promoted) if promoted else None
    return out


@router.get("/api/projects/{project_id}/models", response_model=list[ModelOut])
def list_models(db: DbSession, access: ProjectAccess = require_project("read")) -> list[ModelOut]:
    """The project's registered models."""
    return [model_out(db, m) for m in service.list_models(db, access.project.id)]


@router.post("/api/projects/{project_id}/models", response_model=ModelOut, status_code=status.HTTP_201_CREATED)
def create_model(body: ModelCreate, db: DbSession, access: ProjectAccess = require_project("run_jobs")) -> ModelOut:
    """Register a model (leads and admins)."""
    model = registry_flows.register_model(db, access.project, actor=access.user, **body.model_dump())
    return model_out(db, model)


@router.get("/api/models/{model_id}", response_model=ModelOut)
def get_model(db: DbSession, access: ModelAccess = require_model("read")) -> ModelOut:
    """One model."""
    return model_out(db, access.model)


@router.patch("/api/models/{model_id}", response_model=ModelOut)
def update_model(body: ModelUpdate, db: DbSession, access: ModelAccess = require_model("run_jobs")) -> ModelOut:
    """Change the promotion policy (manual, or auto: retrain after every N approvals and promote on a win)."""
    model = registry_flows.set_promotion_policy(db, access.model, body.promotion, actor=access.user)
    return model_out(db, model)


@router.get("/api/models/{model_id}/versions", response_model=list[ModelVersionOut])
def list_versions(db: DbSession, access: ModelAccess = require_model("read")) -> list[ModelVersionOut]:
    """A model's weight versions with provenance and validation metrics."""
    return [ModelVersionOut.model_validate(v) for v in service.list_versions(db, access.model)]


class WeightsForm(BaseModel):
    """The multipart body of a weights upload."""

    model_config = ConfigDict(title="Body_upload_version_api_models__model_id__versions_post")
    weights: Annotated[UploadFile, Field(description="A torch state_dict file")]
    provenance: str = "{}"
    validation: str = "{}"


@router.post(
    "/api/models/{model_id}/versions",
    response_model=ModelVersionOut,
    status_code=201,
    openapi_extra={"requestBody": uploads.multipart_body(WeightsForm)},
)
async def upload_version(
    request: Request,
    db: DbSession,
    blobs: Blobs,
    settings: SettingsDep,
    access: ModelAccess = require_model("run_jobs"),
) -> ModelVersionOut:
    """Register externally trained weights as the model's next version (not promoted).

    A worker first loads them into the model's network and runs one forward pass on a tiny input; the upload waits
    for that check: refused weights answer 422 with the reason, checked ones 201 with weights_status 'valid'. When
    no worker answers in time it is 201 with 'pending': the version cannot be promoted or used until it passes."""
    # Parsed only now, after the access dependency: an unauthorised caller's upload is never read.
    async with uploads.form_of(request, WeightsForm, max_files=1, invalid=RequestValidationError) as fields:
        return await run_in_threadpool(_upload_version, db, blobs, settings, access, fields)


def _upload_version(
    db: DbSession, blobs: Blobs, settings: SettingsDep, access: ModelAccess, fields: WeightsForm
) -> ModelVersionOut:
    data = uploads.read_limited(fields.weights, settings.max_upload_bytes)
    try:
        provenance_json, validation_json = json.loads(fields.provenance), json.loads(fields.validation)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"provenance/validation must be JSON objects: {exc.msg}") from exc
    version = registry_flows.add_version(
        db,
        blobs,
        access.model,
        weights=data,
        provenance={**provenance_json, "uploaded_by": access.user.id},
        validation=validation_json,
        actor=access.user,
        wait_s=settings.weights_check_wait_s,
        claim_wait_s=settings.weights_check_claim_wait_s,
    )
    return ModelVersionOut.model_validate(version)


@router.post("/api/model-versions/{version_id}/promote", response_model=ModelVersionOut)
def promote(
    db: DbSession, body: PromoteIn | None = None, access: ModelVersionAccess = require_model_version("run_jobs")
) -> ModelVersionOut:
    """Promote a version: refused (409) unless its weights were checked and it passed the promotion gate against
    the promoted one on their shared held-out set (enough held-out scans, no structure losing more than the
    margin, the mean rising: project settings `promotion`). The decision is recorded."""
    version = registry_flows.promote(db, access.version, actor=access.user, reason=body.reason if body else "")
    return ModelVersionOut.model_validate(version)


@router.post("/api/model-versions/{version_id}/rollback", response_model=ModelVersionOut)
def rollback(
    body: RollbackIn, db: DbSession, access: ModelVersionAccess = require_model_version("run_jobs")
) -> ModelVersionOut:
    """Make an earlier version of the model the promoted one again (leads), recorded as a decision with the reason."""
    version = registry_flows.roll_back(db, access.version, reason=body.reason, actor=access.user)
    return ModelVersionOut.model_validate(version)


@router.get("/api/models/{model_id}/decisions", response_model=list[ModelDecisionOut])
def list_decisions(db: DbSession, access: ModelAccess = require_model("read")) -> list[ModelDecisionOut]:
    """The model's promotions and rollbacks, oldest first: who, from which version to which, why, and the gate."""
    return [ModelDecisionOut.model_validate(d) for d in service.decisions(db, access.model)]


@router.get("/api/models/{model_id}/rounds", response_model=list[TrainingRoundOut])
def list_rounds(db: DbSession, access: ModelAccess = require_model("read")) -> list[TrainingRoundOut]:
    """Training rounds: the learning curve (held-out Dice, AI-vs-final Dice, scans revised)."""
    return [TrainingRoundOut.model_validate(r) for r in service.training_rounds(db, access.model)]


@router.get("/api/projects/{project_id}/priorities", response_model=PriorityPage)
def priorities(
    db: DbSession,
    access: ProjectAccess = require_project("read"),
    structure: str | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
) -> PriorityPage:
    """(scan, structure) pairs ranked by the models' disagreement, (D + H) / (|U| + N) (worker/models/attention.py):
    what a radiologist should revise first (approved scans are left out until reopened)."""
    structure_id = None
    if structure:
        structure_id = projects.find_structure(projects.structures_of(db, access.project.id), structure).id
    rows, total = service.ranked_priorities(
        db, access.project.id, offset=(page - 1) * page_size, limit=page_size, structure_id=structure_id
    )
    return PriorityPage(
        items=[
            PriorityOut(
                scan_id=scan.id,
                case_id=scan.case_id,
                structure=st.name,
                priority=a.priority,
                attention_voxels=a.attention_voxels,
                inconsistency_voxels=a.inconsistency_voxels,
                uncertainty_voxels=a.uncertainty_voxels,
                overlap_voxels=a.overlap_voxels,
                model_version_ids=a.model_version_ids,
            )
            for a, scan, st in rows
        ],
        total=total,
        page=page,
        page_size=page_size,
    )


@router.get("/api/projects/{project_id}/priorities/scans", response_model=list[ScanPriorityOut])
def scan_priorities(
    db: DbSession,
    access: ProjectAccess = require_project("read"),
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[ScanPriorityOut]:
    """Scans ranked by their summed attention (approved scans left out)."""
    rows = service.ranked_scans(db, access.project.id, offset=(page - 1) * page_size, limit=page_size)
    return [ScanPriorityOut(scan_id=i, case_id=c, score=s) for i, c, s in rows]


def _record_read(db: DbSession, request: Request, access: ScanAccess, kind: str, object_id: int, detail: str) -> None:
    """Append this read of patient-derived data to the read log (in a transaction of its own)."""
    reads.record_read(
        db,
        actor=access.user,
        project_id=access.scan.project_id,
        scan_id=access.scan.id,
        kind=kind,
        object_id=object_id,
        detail=detail,
        client=request.client.host if request.client else None,
    )


@router.get("/api/scans/{scan_id}/attention/{structure}", response_class=Response)
def attention_map(
    structure: str, request: Request, db: DbSession, blobs: Blobs, access: ScanAccess = require_scan("read")
) -> Response:
    """A structure's attention map as a uint8 .nii.gz in the scan's geometry (for the viewer's heat overlay).
    The read is logged."""
    found = projects.find_structure(projects.structures_of(db, access.scan.project_id), structure)
    row = service.attention_for(db, access.scan.id, found.id)
    _record_read(db, request, access, "attention", row.id, found.name)
    manifest = chunks.MaskManifest.from_bytes(blobs.get_bytes(row.manifest_digest))
    mask = chunks.assemble_mask(manifest, blobs.get_bytes)
    body = nifti.to_nifti_gz(mask.astype("uint8"), scans.geometry_of(access.scan).affine)
    return Response(body, media_type="application/octet-stream", headers={"X-Priority": f"{row.priority:.6g}"})


@router.get("/api/scans/{scan_id}/predictions", response_model=list[PredictionOut])
def predictions(db: DbSession, access: ScanAccess = require_scan("read")) -> list[PredictionOut]:
    """The newest prediction of each model version for this scan."""
    return [
        PredictionOut(
            id=p.id,
            job_id=p.job_id,
            scan_id=p.scan_id,
            model_version_id=p.model_version_id,
            label_version_id=p.label_version_id,
            structures=sorted(p.maps),
            created_at=p.created_at,
        )
        for p in service.latest_predictions(db, access.scan.id)
    ]


@router.get("/api/scans/{scan_id}/predictions/{prediction_id}/{map_kind}/{structure}", response_class=Response)
def scan_prediction_map(
    prediction_id: PathId,
    map_kind: str,
    structure: str,
    request: Request,
    db: DbSession,
    blobs: Blobs,
    access: ScanAccess = require_scan("read"),
) -> Response:
    """A uint8-quantised probability (p*255) or entropy map of one structure as .nii.gz on the scan grid.
    The read is logged."""
    body, etag = service.prediction_map(db, blobs, access.scan.id, prediction_id, map_kind, structure)
    _record_read(db, request, access, "prediction", prediction_id, f"{map_kind}/{structure}")
    return Response(body, media_type="application/octet-stream", headers={"ETag": f'"{etag}"'})
