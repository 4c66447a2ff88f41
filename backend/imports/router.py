"""Dataset import endpoints: launch or resume the import of a server-side folder, follow it, read its report."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from backend.auth.dependencies import DbSession, SettingsDep
from backend.core.errors import NotFound
from backend.core.ids import PathId
from backend.flows import imports as import_flows
from backend.imports import service
from backend.imports.dependencies import ImportRunAccess, require_import_run
from backend.imports.schemas import (
    CaseCounts,
    CaseStatus,
    ImportCaseOut,
    ImportLaunchOut,
    ImportReportOut,
    ImportRequest,
    ImportRunOut,
    ImportRunPage,
)
from backend.projects.dependencies import ProjectAccess, require_project

router = APIRouter(tags=["imports"])


def run_out(progress: service.RunProgress) -> ImportRunOut:
    """Serialise a run with its counts."""
    run = progress.run
    return ImportRunOut(
        id=run.id,
        project_id=run.project_id,
        root=run.root,
        status="running" if progress.status == "running" else "finished",
        counts=CaseCounts(**progress.counts, total=progress.total),
        launches=run.launches,
        created_by=run.created_by,
        created_at=run.created_at,
        launched_at=run.launched_at,
        finished_at=progress.finished_at,
        eta_s=progress.eta_s,
    )


def case_out(line: service.CaseLine) -> ImportCaseOut:
    """Serialise one case of a report."""
    row = line.row
    return ImportCaseOut(
        case_id=row.case_id,
        split=row.split,
        status=line.status,
        file=row.file,
        reason=line.reason,
        scan_id=row.scan_id,
        job_id=row.job_id,
        attempts=row.attempts,
        missing_structures=list(row.notes.get("missing_structures", [])),
        unknown_files=list(row.notes.get("unknown_files", [])),
        timings={k: float(v) for k, v in row.timings.items()},
        worker=row.worker,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


@router.post(
    "/api/projects/{project_id}/imports",
    response_model=ImportLaunchOut,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": ImportLaunchOut, "description": "The folder's run existed: it was resumed."}},
)
def launch_import(
    body: ImportRequest,
    response: Response,
    db: DbSession,
    settings: SettingsDep,
    access: ProjectAccess = require_project("import"),
) -> ImportLaunchOut:
    """Import a PanTS-layout dataset folder on the server as one `cpu` job per case (leads and admins).

    The folder must lie under the server's import root (`MASKLOOP_IMPORT_ROOT`; a relative path is taken from it,
    symlinks are resolved first): a folder outside it, or any folder when no import root is configured, is
    refused with **403** and nothing is read. A folder that does not exist, is not a PanTS dataset (no ImageTr
    or ImageTe) or whose metadata sheet cannot be read is refused with **422**. Two launches of one new folder
    at the same instant: the second gets **409** and may simply retry.

    Each case is imported in its own transaction by whichever worker takes its job: its CT, an `import` label
    version of its masks (absent mask files are recorded as missing structures), QA. A case that cannot be
    imported (a truncated or missing file, a mask on another grid, a metadata row without a case folder) is
    reported with its file and reason while the others go on. **201** starts a run; launching a folder that
    already has a run in this project resumes it (**200**): imported and skipped cases stay as they are, cases
    still being imported are left to their jobs, failed ones are queued again. Follow the run with
    `GET /api/projects/{project_id}/imports/{run_id}`.
    """
    launched = import_flows.launch_import_under_root(
        db, access.project, body.path, actor=access.user, import_root=settings.import_root
    )
    if not launched.created:
        response.status_code = status.HTTP_200_OK
    progress = service.run_progress(db, launched.run)
    return ImportLaunchOut(
        **run_out(progress).model_dump(),
        resumed=not launched.created,
        queued=len(launched.jobs),
        in_progress=launched.in_progress,
        found=launched.cases,
    )


@router.get("/api/projects/{project_id}/imports", response_model=ImportRunPage)
def list_imports(
    db: DbSession,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    access: ProjectAccess = require_project("import"),
) -> ImportRunPage:
    """The project's import runs with their progress, newest launch first (leads and admins)."""
    runs, total = service.list_runs(db, access.project.id, offset=offset, limit=limit)
    return ImportRunPage(items=[run_out(p) for p in runs], total=total)


@router.get("/api/projects/{project_id}/imports/{run_id}", response_model=ImportReportOut)
def import_report(
    project_id: PathId,
    db: DbSession,
    case_status: Annotated[
        CaseStatus | None, Query(alias="status", description="only the cases with this status, e.g. 'failed'")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    access: ImportRunAccess = require_import_run("import"),
) -> ImportReportOut:
    """A run's progress and report (leads and admins): counts per status, then its cases by case id, a page at a
    time, optionally only those of one status. A failed case names the file at fault (relative to the dataset
    folder) and the reason; a case whose job ended without importing it (its worker was lost too often, the job
    was cancelled) is reported failed with the job's error, and a resume queues it again."""
    if access.run.project_id != project_id:
        raise NotFound(f"import run {access.run.id} not found")
    lines, total = service.case_lines(db, access.run, status=case_status, offset=offset, limit=limit)
    return ImportReportOut(
        run=run_out(service.run_progress(db, access.run)),
        cases=[case_out(line) for line in lines],
        total=total,
        offset=offset,
        limit=limit,
    )
