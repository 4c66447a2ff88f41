"""Scan endpoints: import NIfTI or DICOM, list and filter, metadata, and the volume for the viewer."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, UploadFile, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from backend.auth.dependencies import Blobs, DbSession, SettingsDep
from backend.core import uploads
from backend.core.errors import InvalidInput
from backend.flows import labels as flows
from backend.flows import reads
from backend.http_blobs import blob_response
from backend.models import Scan
from backend.projects.dependencies import ProjectAccess, require_project
from backend.scans import service
from backend.scans.dependencies import ScanAccess, require_scan
from backend.scans.schemas import ScanFacets, ScanOut, ScanPage

router = APIRouter(tags=["scans"])


def _parse_metadata(metadata: str | None) -> dict[str, str] | None:
    if not metadata:
        return None
    try:
        parsed = json.loads(metadata)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"metadata is not valid JSON: {exc.msg}") from exc
    if not isinstance(parsed, dict):
        raise InvalidInput("metadata must be a JSON object of column -> value")
    return {str(k): "" if v is None else str(v) for k, v in parsed.items()}


class ImportNiftiForm(BaseModel):
    """The multipart body of a NIfTI import."""

    model_config = ConfigDict(title="Body_import_nifti_api_projects__project_id__scans_post")
    file: Annotated[UploadFile, Field(description="A .nii or .nii.gz CT volume")]
    case_id: str | None = None
    split: str | None = None
    metadata: Annotated[str | None, Field(description="JSON object with PanTS metadata columns")] = None


class ImportDicomForm(BaseModel):
    """The multipart body of a DICOM series import."""

    model_config = ConfigDict(title="Body_import_dicom_api_projects__project_id__scans_dicom_post")
    files: Annotated[list[UploadFile], Field(description="Every file of one DICOM series")]
    case_id: str
    split: str | None = None
    metadata: str | None = None


# A DICOM series has one file per slice; thin-slice CTs reach a few thousand.
MAX_DICOM_FILES = 5000


@router.post(
    "/api/projects/{project_id}/scans",
    response_model=ScanOut,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={"requestBody": uploads.multipart_body(ImportNiftiForm)},
)
async def import_nifti(
    request: Request,
    db: DbSession,
    blobs: Blobs,
    settings: SettingsDep,
    access: ProjectAccess = require_project("import"),
) -> Scan:
    """Import one NIfTI volume (any orientation and data type; the header is kept as is)."""
    async with uploads.form_of(request, ImportNiftiForm, max_files=1, invalid=RequestValidationError) as fields:
        return await run_in_threadpool(_import_nifti, db, blobs, settings, access, fields)


def _import_nifti(
    db: DbSession, blobs: Blobs, settings: SettingsDep, access: ProjectAccess, fields: ImportNiftiForm
) -> Scan:
    data = uploads.read_limited(fields.file, settings.max_upload_bytes)
    return flows.import_scan_nifti(
        db,
        blobs,
        access.project,
        data,
        fields.file.filename or "volume.nii.gz",
        case_id=fields.case_id,
        split=fields.split,
        raw_metadata=_parse_metadata(fields.metadata),
        actor=access.user,
    )


@router.post(
    "/api/projects/{project_id}/scans/dicom",
    response_model=ScanOut,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={"requestBody": uploads.multipart_body(ImportDicomForm)},
)
async def import_dicom(
    request: Request,
    db: DbSession,
    blobs: Blobs,
    settings: SettingsDep,
    access: ProjectAccess = require_project("import"),
) -> Scan:
    """Import one DICOM series (slices sorted by position, HU from rescale, converted to RAS NIfTI)."""
    form = uploads.form_of(request, ImportDicomForm, max_files=MAX_DICOM_FILES, invalid=RequestValidationError)
    async with form as fields:
        return await run_in_threadpool(_import_dicom, db, blobs, settings, access, fields)


def _import_dicom(
    db: DbSession, blobs: Blobs, settings: SettingsDep, access: ProjectAccess, fields: ImportDicomForm
) -> Scan:
    service.check_case_id(fields.case_id)
    with tempfile.TemporaryDirectory(prefix="maskloop-dicom-") as tmp:
        # The client's cleaned names (one numbered folder each, no traversal): errors name the files as sent.
        paths = uploads.spool_files(fields.files, Path(tmp), settings.max_upload_bytes, default="slice")
        return flows.import_scan_dicom(
            db,
            blobs,
            access.project,
            paths,
            case_id=fields.case_id,
            split=fields.split,
            raw_metadata=_parse_metadata(fields.metadata),
            actor=access.user,
        )


@router.get("/api/projects/{project_id}/scans", response_model=ScanPage)
def list_scans(
    db: DbSession,
    access: ProjectAccess = require_project("read"),
    site: str | None = None,
    phase: str | None = None,
    sex: str | None = None,
    tumor: bool | None = None,
    manufacturer: str | None = None,
    split: str | None = None,
    age_min: int | None = None,
    age_max: int | None = None,
    q: Annotated[str | None, Query(max_length=200, description="part of the case id")] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ScanPage:
    """Scans of a project filtered by metadata, ordered by case id, one page at a time."""
    flt = service.ScanFilter(
        site=site,
        phase=phase,
        sex=sex,
        tumor=tumor,
        manufacturer=manufacturer,
        split=split,
        age_min=age_min,
        age_max=age_max,
        search=q,
    )
    items, total = service.list_scans(db, access.project.id, flt, (page - 1) * page_size, page_size)
    return ScanPage(items=[ScanOut.model_validate(s) for s in items], total=total, page=page, page_size=page_size)


@router.get("/api/projects/{project_id}/scan-facets", response_model=ScanFacets)
def scan_facets(db: DbSession, access: ProjectAccess = require_project("read")) -> ScanFacets:
    """Counts of scans per site, phase, sex, manufacturer, tumour flag and split."""
    return ScanFacets(facets=service.facets(db, access.project.id))


@router.get("/api/scans/{scan_id}", response_model=ScanOut)
def get_scan(access: ScanAccess = require_scan("read")) -> Scan:
    """One scan with its geometry and metadata."""
    return access.scan


@router.get(
    "/api/scans/{scan_id}/volume",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, 304: {"description": "unchanged"}},
)
def get_volume(request: Request, db: DbSession, blobs: Blobs, access: ScanAccess = require_scan("read")) -> Response:
    """The CT volume as .nii.gz, served from the stored blob (no recompression), with an ETag; the read is logged."""
    scan = access.scan
    etag = f'"{scan.image_digest}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
    cached = etag in request.headers.get("if-none-match", "")
    # A 304 is logged too: the browser shows the volume again from its cache, so the person did read it.
    reads.record_read(
        db,
        actor=access.user,
        project_id=scan.project_id,
        scan_id=scan.id,
        kind="volume",
        object_id=scan.id,
        digest=scan.image_digest,
        client=request.client.host if request.client else None,
        not_modified=cached,
    )
    if cached:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    # A file (local store), a streamed and ranged proxy of the S3 object, or a redirect to a presigned URL.
    return blob_response(
        request,
        blobs,
        scan.image_digest,
        media_type="application/octet-stream",
        filename=f"{scan.case_id}.nii.gz",
        headers=headers,
        allow_redirect=True,
    )
