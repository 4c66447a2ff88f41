"""Evaluation endpoints: create runs (queued cpu jobs), read summaries and per-case results, the leaderboard."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from backend.auth.dependencies import DbSession
from backend.core.errors import Conflict
from backend.evaluation import metrics, service
from backend.evaluation import settings as evaluation_settings
from backend.evaluation.dependencies import EvaluationAccess, require_evaluation
from backend.evaluation.schemas import (
    CasesOut,
    EvaluationCreate,
    EvaluationOptionsOut,
    EvaluationOut,
    EvaluationPage,
    EvaluationReportOut,
    LeaderboardOut,
)
from backend.flows import jobs as job_flows
from backend.jobs import service as jobs
from backend.models import EvaluationRun
from backend.projects.dependencies import ProjectAccess, require_project

router = APIRouter(tags=["evaluation"])


def run_out(db: DbSession, run: EvaluationRun, *, with_summary: bool = True) -> EvaluationOut:
    """Serialise a run with its job's status (the planned pairs are left out: see the cases endpoint)."""
    job = jobs.get_job(db, run.job_id) if run.job_id is not None else None
    state = service.run_state(db, run)
    config = {k: v for k, v in run.config.items() if k != "pairs"}
    return EvaluationOut(
        id=run.id,
        project_id=run.project_id,
        name=run.name,
        status=state.status,
        job_id=run.job_id,
        job_status=job.status if job else None,
        job_progress=job.progress if job else None,
        model_version_id=run.model_version_id,
        split=run.config.get("split"),
        structures=list(run.config.get("structures", [])),
        cases_planned=len(run.config.get("pairs", [])),
        metric_definition=service.run_definition(run),
        nsd_definition=metrics.describe_definition(service.run_definition(run)),
        config=config,
        summary=run.summary if with_summary else {},
        error=state.error,
        created_by=run.created_by,
        created_at=run.created_at,
        finished_at=state.finished_at,
    )


@router.post("/api/projects/{project_id}/evaluations", response_model=EvaluationOut, status_code=201)
def create_evaluation(
    body: EvaluationCreate, db: DbSession, access: ProjectAccess = require_project("run_jobs")
) -> EvaluationOut:
    """Queue an evaluation of a model version (or explicit label versions) against approved ground truth."""
    request = service.EvaluationRequest(
        name=body.name,
        model_version_id=body.model_version_id,
        model_name=body.model,
        version_ids=body.version_ids,
        split=body.split,
        structures=body.structures,
        nsd_tolerance_mm=body.nsd_tolerance_mm,
        detection=body.detection.model_dump() if body.detection else None,
        metric_definition=body.metric_definition,
    )
    run, _ = job_flows.launch_evaluation(db, access.project, request, actor=access.user)
    return run_out(db, run)


@router.get("/api/projects/{project_id}/evaluations", response_model=EvaluationPage)
def list_evaluations(
    db: DbSession,
    access: ProjectAccess = require_project("read"),
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=200)] = 50,
) -> EvaluationPage:
    """A project's evaluation runs, newest first (without summaries)."""
    runs, total = service.list_runs(db, access.project.id, offset=(page - 1) * page_size, limit=page_size)
    items = [run_out(db, run, with_summary=False) for run in runs]
    return EvaluationPage(items=items, total=total, page=page, page_size=page_size)


@router.get("/api/evaluations/{evaluation_id}", response_model=EvaluationOut)
def get_evaluation(db: DbSession, access: EvaluationAccess = require_evaluation("read")) -> EvaluationOut:
    """One run: status, config and summary (per structure, breakdowns, detection)."""
    return run_out(db, access.run)


@router.get("/api/evaluations/{evaluation_id}/cases", response_model=None)
def evaluation_cases(
    db: DbSession,
    access: EvaluationAccess = require_evaluation("read"),
    format_: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
) -> CasesOut | Response:
    """Per-case-per-structure metrics as JSON (with per-case detection) or as a CSV download."""
    run = access.run
    if run.status != "succeeded":
        raise Conflict(f"evaluation {run.id} is {run.status}; its cases exist once it has succeeded", status=run.status)
    rows = service.case_rows(db, run)
    if format_ == "csv":
        return Response(
            content=service.cases_csv(rows),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="evaluation-{run.id}-cases.csv"'},
        )
    return CasesOut(
        run_id=run.id,
        metric_definition=service.run_definition(run),
        nsd_definition=metrics.describe_definition(service.run_definition(run)),
        empty_policy=metrics.EMPTY_POLICY,
        cases=rows,
        detection=service.detection_rows(db, run),
    )


@router.get("/api/projects/{project_id}/leaderboard", response_model=LeaderboardOut)
def leaderboard(
    db: DbSession,
    access: ProjectAccess = require_project("read"),
    structure: str | None = None,
    split: Annotated[str | None, Query(max_length=16)] = None,
    metric_definition: Annotated[
        Literal["deepmind", "lorensen", "monai"] | None,
        Query(description="rank only runs of this definition (default: the project's, else 'deepmind')"),
    ] = None,
) -> LeaderboardOut:
    """Model versions per structure, ranked by mean DSC (then NSD) over each one's latest finished run."""
    definition = metric_definition or evaluation_settings.project_defaults(access.project.settings)["metric_definition"]
    rows = service.leaderboard(db, access.project.id, structure, split, definition)
    return LeaderboardOut(
        structure=structure,
        split=split,
        metric_definition=definition,
        nsd_definition=metrics.describe_definition(definition),
        rows=rows,
    )


@router.get("/api/evaluations/{evaluation_id}/report", response_model=EvaluationReportOut)
def evaluation_report(db: DbSession, access: EvaluationAccess = require_evaluation("read")) -> EvaluationReportOut:
    """The whole run as one document (config, summary, per-case rows, detection); states its metric definition."""
    data = service.report(db, access.run)
    data["status"] = service.run_state(db, access.run).status
    return EvaluationReportOut(**data)


@router.get("/api/projects/{project_id}/evaluation-options", response_model=EvaluationOptionsOut)
def evaluation_options(db: DbSession, access: ProjectAccess = require_project("read")) -> EvaluationOptionsOut:
    """Choices for starting an evaluation: metric definitions, the project's defaults, splits and model versions."""
    return EvaluationOptionsOut(**service.evaluation_options(db, access.project))
