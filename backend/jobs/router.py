"""Job endpoints: launch pre-annotation, attention and training; list, inspect and cancel jobs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from backend.auth.dependencies import DbSession
from backend.core.config import get_settings
from backend.core.errors import NotFound
from backend.core.ids import PathId
from backend.flows import jobs as job_flows
from backend.jobs import service
from backend.jobs.dependencies import JobAccess, require_job
from backend.jobs.schemas import (
    AttentionRequest,
    FailRequest,
    JobOut,
    JobPage,
    PreannotateRequest,
    ScanFilterIn,
    TrainRequest,
)
from backend.models import Job
from backend.projects.dependencies import ProjectAccess, require_project
from backend.registry import service as registry
from backend.scans import service as scans

router = APIRouter(tags=["jobs"])

# The pre-annotation response stays a list of jobs; how many approved scans it skipped travels in headers.
SKIPPED_APPROVED = "X-Skipped-Approved"
SKIPPED_APPROVED_SCANS = "X-Skipped-Approved-Scans"


def job_out(job: Job, position: int | None) -> JobOut:
    """Serialise a job with its queue position and timings."""
    # Timestamps come back timezone-aware on every database (UTCDateTime).
    created, started, finished = job.created_at, job.started_at, job.finished_at
    now = datetime.now(UTC)
    wait = ((started or (finished if job.status == "cancelled" else None) or now) - created).total_seconds()
    run = ((finished or now) - started).total_seconds() if started else None
    return JobOut(
        id=job.id,
        project_id=job.project_id,
        kind=job.kind,
        queue=job.queue,
        status=job.status,
        progress=job.progress,
        message=job.message,
        queue_position=position,
        error=job.error,
        params=job.params,
        result=job.result,
        scan_id=job.scan_id,
        model_version_id=job.model_version_id,
        created_by=job.created_by,
        created_at=created,
        started_at=started,
        finished_at=finished,
        heartbeat_at=job.heartbeat_at,
        attempts=job.attempts,
        worker=job.worker,
        cancel_requested=job.cancel_requested,
        wait_seconds=wait,
        run_seconds=run,
    )


def _outs(db: DbSession, jobs: list[Job]) -> list[JobOut]:
    positions = service.queue_positions(db, jobs)
    return [job_out(job, positions.get(job.id)) for job in jobs]


def _filter(flt: ScanFilterIn | None) -> scans.ScanFilter | None:
    if flt is None:
        return None
    data = flt.model_dump()
    return scans.ScanFilter(search=data.pop("q"), **data)


@router.post("/api/projects/{project_id}/preannotate", response_model=list[JobOut], status_code=201)
def preannotate(
    body: PreannotateRequest, response: Response, db: DbSession, access: ProjectAccess = require_project("run_jobs")
) -> list[JobOut]:
    """Queue pre-annotation of one scan, a filtered set, or the whole project (one job per scan).

    Approved scans are read-only and skipped: the response's `X-Skipped-Approved` header counts them and
    `X-Skipped-Approved-Scans` lists their ids (the first 1000). Only approved scans selected: 409 `scan_approved`.
    """
    launch = job_flows.launch_preannotation(
        db,
        access.project,
        model_version_id=body.model_version_id,
        model_name=body.model,
        scan_ids=body.scan_ids,
        flt=_filter(body.filter),
        all_scans=body.all,
        actor=access.user,
    )
    response.headers[SKIPPED_APPROVED] = str(len(launch.skipped))
    response.headers[SKIPPED_APPROVED_SCANS] = ",".join(str(i) for i in launch.skipped[:1000])
    return _outs(db, launch.jobs)


@router.post("/api/projects/{project_id}/attention", response_model=list[JobOut], status_code=201)
def attention(
    body: AttentionRequest, db: DbSession, access: ProjectAccess = require_project("run_jobs")
) -> list[JobOut]:
    """Queue attention-map computation for scans predicted by ≥ 2 model versions."""
    jobs = job_flows.launch_attention(
        db,
        access.project,
        scan_ids=body.scan_ids,
        flt=_filter(body.filter),
        all_scans=body.all,
        model_version_ids=body.model_version_ids,
        actor=access.user,
    )
    return _outs(db, jobs)


@router.post("/api/projects/{project_id}/models/{model_id}/train", response_model=JobOut, status_code=201)
def train(
    model_id: PathId, body: TrainRequest, db: DbSession, access: ProjectAccess = require_project("run_jobs")
) -> JobOut:
    """Queue fine-tuning of a model on the given label versions (default: the approved ones), with a held-out split."""
    model = registry.get_model(db, model_id)
    if model.project_id != access.project.id:
        raise NotFound(f"model {model_id} not found")
    job = job_flows.launch_training(
        db,
        access.project,
        model,
        label_version_ids=body.label_version_ids,
        epochs=body.epochs,
        heldout_fraction=body.heldout_fraction,
        seed=body.seed,
        init=body.init,
        actor=access.user,
    )
    return _outs(db, [job])[0]


@router.get("/api/projects/{project_id}/jobs", response_model=JobPage)
def list_jobs(
    db: DbSession,
    access: ProjectAccess = require_project("read"),
    status_: Annotated[str | None, Query(alias="status")] = None,
    kind: str | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobPage:
    """A project's jobs, newest first, with queue positions."""
    items, total = service.list_jobs(
        db, access.project.id, status=status_, kind=kind, offset=(page - 1) * page_size, limit=page_size
    )
    return JobPage(items=_outs(db, items), total=total, page=page, page_size=page_size)


@router.get("/api/jobs/{job_id}", response_model=JobOut)
def get_job(db: DbSession, access: JobAccess = require_job("read")) -> JobOut:
    """One job: status, progress, queue position, timings, error, results."""
    return _outs(db, [access.job])[0]


@router.post("/api/jobs/{job_id}/cancel", response_model=JobOut, status_code=status.HTTP_200_OK)
def cancel(db: DbSession, access: JobAccess = require_job("run_jobs")) -> JobOut:
    """Cancel a queued job, or ask a running one to stop at its next progress report.

    A running job whose worker is gone (heartbeat older than `job_stale_after_s`) is cancelled at once; one whose
    worker dies after the request is cancelled by the workers' reaper.
    """
    job = job_flows.cancel(db, access.job, actor=access.user, stale_after_s=get_settings().job_stale_after_s)
    return _outs(db, [job])[0]


@router.post("/api/jobs/{job_id}/fail", response_model=JobOut, status_code=status.HTTP_200_OK)
def force_fail(db: DbSession, body: FailRequest | None = None, access: JobAccess = require_job("run_jobs")) -> JobOut:
    """End a stuck queued or running job as failed at once (project lead or admin); 409 when it is already final.

    A worker still on it stops at its next heartbeat and writes nothing.
    """
    job = job_flows.force_fail(db, access.job, body.reason if body else None, actor=access.user)
    return _outs(db, [job])[0]
