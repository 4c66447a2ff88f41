"""Export endpoints: queue an export job; download its archive once it has finished."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from backend.auth.dependencies import Blobs, DbSession
from backend.exports import service
from backend.exports.dependencies import JobAccess, require_export
from backend.exports.schemas import ExportJobOut, ExportOptionsOut, ExportRequest
from backend.flows import jobs as job_flows
from backend.flows import reads
from backend.http_blobs import blob_response
from backend.jobs import service as jobs
from backend.projects.dependencies import ProjectAccess, require_project
from backend.scans import service as scans

router = APIRouter(tags=["exports"])


@router.post("/api/projects/{project_id}/exports", response_model=ExportJobOut, status_code=201)
def create_export(
    body: ExportRequest, db: DbSession, access: ProjectAccess = require_project("run_jobs")
) -> ExportJobOut:
    """Queue an export (cpu queue); poll GET /api/jobs/{id}, then download /api/exports/{id}/download."""
    flt = None
    if body.filter is not None:
        data = body.filter.model_dump()
        flt = scans.ScanFilter(search=data.pop("q"), **data)
    params = service.validate_request(
        db,
        access.project,
        fmt=body.format,
        version=body.version,
        structures=body.structures,
        scan_ids=body.scan_ids,
        flt=flt,
        nnunet_labels=body.nnunet_labels,
        dataset_id=body.dataset_id,
        dataset_name=body.dataset_name,
        test_split=body.test_split,
        ignore_label=body.ignore_label,
        folder_name=body.folder_name,
    )
    job = job_flows.launch_export(db, access.project, params, actor=access.user)
    return ExportJobOut(
        job_id=job.id,
        status=job.status,
        queue=job.queue,
        queue_position=jobs.queue_positions(db, [job]).get(job.id),
        message=job.message,
        params=job.params,
        download_url=f"/api/exports/{job.id}/download",
    )


@router.get("/api/projects/{project_id}/export-options", response_model=ExportOptionsOut)
def export_options(db: DbSession, access: ProjectAccess = require_project("read")) -> ExportOptionsOut:
    """What an export request can choose (formats, versions, split handling, ignore label) and the defaults."""
    return ExportOptionsOut(**service.export_options(db, access.project))


@router.get("/api/exports/{job_id}/download", response_class=Response)
def download_export(
    request: Request, db: DbSession, blobs: Blobs, access: JobAccess = require_export("read")
) -> Response:
    """The export archive (.tar.gz); 409 while the job has not finished. The download is logged as a read."""
    digest, name = service.download_of(access.job)
    reads.record_read(
        db,
        actor=access.user,
        project_id=access.job.project_id,
        scan_id=None,
        kind="export",
        object_id=access.job.id,
        detail=name,
        digest=digest,
        client=request.client.host if request.client else None,
    )
    headers = {"ETag": f'"{digest}"'}
    return blob_response(request, blobs, digest, media_type="application/gzip", filename=name, headers=headers)
