"""Launching a dataset import, or resuming it: one run per (project, folder), one row and one `cpu` job per case.

Launching the folder again resumes its run: the folder is surveyed again (new cases join), cases already imported
or skipped stay as they are, cases still being imported are left to their jobs, and failed or abandoned cases get a
new job. A case already in the project (imported by any means) is skipped, never imported twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.errors import Conflict, InvalidInput
from backend.imaging import pants
from backend.jobs import outbox
from backend.jobs import service as jobs
from backend.models import ImportCase, ImportRun, Job, Project, Scan, User
from backend.projects import service as projects
from backend.scans import service as scans

# Case rows whose job may still import them: left alone by a resume.
_IN_PROGRESS = ("pending", "running")
_CASE_ID_CHARS = 200


@dataclass(frozen=True)
class Launch:
    """What a launch did: the run, whether it is new, the jobs it queued (one per case) and the cases it found."""

    run: ImportRun
    created: bool
    jobs: list[Job]
    cases: int
    in_progress: int


def _now() -> datetime:
    return datetime.now(UTC)


def _run_for(db: Session, project: Project, root: Path, actor: User | None) -> tuple[ImportRun, bool]:
    """The folder's run in the project, locked for this launch (a new one if there is none)."""
    run = db.scalar(
        select(ImportRun).where(ImportRun.project_id == project.id, ImportRun.root == str(root)).with_for_update()
    )
    if run is not None:
        run.launches += 1
        run.launched_at = _now()
        return run, False
    run = ImportRun(project_id=project.id, root=str(root), created_by=actor.id if actor else None, launches=1)
    try:
        with db.begin_nested():
            db.add(run)
            db.flush()
    except IntegrityError as exc:
        raise Conflict(f"an import of {str(root)!r} is being started right now; try again in a moment") from exc
    return run, True


def _fail(row: ImportCase, file: str | None, reason: str) -> None:
    row.status = "failed"
    row.file = file[:1000] if file else None
    row.reason = reason
    row.job_id = None
    row.finished_at = _now()


def launch(db: Session, project: Project, root: Path, actor: User | None) -> Launch:
    """Survey `root` (a resolved PanTS-layout folder) and queue one import job per case still to import.

    The jobs are sent once the caller commits (backend.jobs.outbox). Problems of single cases (no CT, unsafe
    names, a metadata row without a case folder) are recorded as failed cases; a folder that is not a dataset, or
    whose metadata sheet is unreadable, is refused as a whole (422).
    """
    names = [s.name for s in projects.structures_of(db, project.id)]
    folder = pants.survey_pants_folder(root, names, read_masks=False)
    run, created = _run_for(db, project, folder.root, actor)
    rows: dict[str, ImportCase] = {}
    active: set[str] = set()
    for row, job_status in db.execute(
        select(ImportCase, Job.status).outerjoin(Job, Job.id == ImportCase.job_id).where(ImportCase.run_id == run.id)
    ):
        rows[row.case_id] = row
        if row.status in _IN_PROGRESS and job_status in jobs.ACTIVE:
            active.add(row.case_id)
    in_project = {
        case_id: scan_id
        for case_id, scan_id in db.execute(select(Scan.case_id, Scan.id).where(Scan.project_id == project.id))
    }

    def row_of(case_id: str, split: str | None) -> ImportCase:
        key = case_id[:_CASE_ID_CHARS]
        if key not in rows:
            rows[key] = ImportCase(run_id=run.id, case_id=key, split=split, status="pending", attempts=0)
            db.add(rows[key])
        return rows[key]

    queued: list[ImportCase] = []
    for case in folder.cases:
        row = row_of(case.case_id, case.split)
        if row.status in ("imported", "skipped") or case.case_id in active:
            continue
        scan_id = in_project.get(case.case_id)
        if scan_id is not None:
            row.status, row.scan_id, row.job_id, row.raw_metadata = "skipped", scan_id, None, {}
            row.file, row.reason = None, f"already in the project (scan {scan_id})"
            continue
        try:
            scans.check_case_id(case.case_id)
        except InvalidInput as exc:
            _fail(row, str(case.image_path.parent.relative_to(folder.root)), exc.message)
            continue
        row.status, row.split, row.raw_metadata = "pending", case.split, case.raw_metadata
        row.file = row.reason = None
        queued.append(row)
    for problem in folder.problems:
        row = row_of(problem.case_id, None)
        if row.status not in ("imported", "skipped") and row.case_id not in active:
            _fail(row, problem.file, problem.reason)
    for case_id in folder.orphan_rows:
        row = row_of(case_id, None)
        if row.status not in ("imported", "skipped") and row.case_id not in active:
            where = " or ".join(f"{image}/{case_id}" for image, _, _ in pants.SPLITS)
            _fail(row, folder.metadata_file, f"the metadata sheet has a row for {case_id} but no case folder ({where})")
    db.flush()
    launched = _queue(db, project, run, actor, queued)
    audit.record(
        db,
        actor_user_id=actor.id if actor else None,
        action="import.launch",
        entity_type="import_run",
        entity_id=run.id,
        project_id=project.id,
        details={
            "root": run.root,
            "resumed": not created,
            "cases": len(folder.cases),
            "queued": len(launched),
            "in_progress": len(active),
            "problems": len(folder.problems) + len(folder.orphan_rows),
            "job_ids": [launched[0].id, launched[-1].id] if launched else [],
        },
    )
    return Launch(run, created, launched, len(folder.cases), len(active))


def _queue(db: Session, project: Project, run: ImportRun, actor: User | None, rows: list[ImportCase]) -> list[Job]:
    """One queued `import` job per case row, inserted together (a dataset has tens of thousands of cases: one
    audit record for the launch stands for their `job.create` records) and sent after the commit."""
    created = [
        Job(
            project_id=project.id,
            kind="import",
            queue=jobs.QUEUE_OF_KIND["import"],
            status="queued",
            params={"run_id": run.id, "case_id": row.case_id},
            created_by=actor.id if actor else None,
            message=outbox.WAITING,
        )
        for row in rows
    ]
    db.add_all(created)
    db.flush()
    for row, job in zip(rows, created, strict=True):
        row.job_id = job.id
    db.flush()
    outbox.send_after_commit(db, created)
    return created
