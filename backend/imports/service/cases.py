"""Importing one case of a run, in three steps that a worker (or `maskloop import --here`) runs around its claim:

1. `begin_case` (a short transaction): the case row becomes `running`, or the job ends at once when there is
   nothing to do (the case is done, already in the project, or a newer job owns it).
2. `prepare_case` (no transaction): read the case folder again, decode the CT and the masks (in threads) and store
   their blobs. Blobs are content-addressed: a retried case writes the same ones again, harmlessly.
3. `complete_case` (one transaction): the scan, its `import` version and QA, the case row `imported` and the job
   `succeeded` commit together, so a case is never half-written; a case another job imported first is `skipped`.
   `fail_case` records a failure (the file at fault and why) when step 2 or 3 raised.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.errors import Conflict, DomainError
from backend.imaging import pants
from backend.jobs import service as jobs
from backend.models import ImportCase, ImportRun, Job, Project, Scan, User
from backend.projects import service as projects
from backend.scans import service as scans


@dataclass(frozen=True)
class CaseWork:
    """What an import job works on, read in its first transaction (the case row id and where its files are)."""

    job_id: int
    row_id: int
    project_id: int
    actor_id: int | None
    root: Path
    case_id: str
    split: str
    raw_metadata: dict[str, str] = field(default_factory=dict)
    structure_names: tuple[str, ...] = ()


def _now() -> datetime:
    return datetime.now(UTC)


def _case_row(db: Session, job: Job) -> ImportCase | None:
    run_id, case_id = job.params.get("run_id"), job.params.get("case_id")
    return db.scalar(
        select(ImportCase).where(ImportCase.run_id == run_id, ImportCase.case_id == case_id).with_for_update()
    )


def _scan_id(db: Session, project_id: int, case_id: str) -> int | None:
    return db.scalar(select(Scan.id).where(Scan.project_id == project_id, Scan.case_id == case_id))


def _skip(db: Session, job: Job, row: ImportCase, scan_id: int, reason: str) -> None:
    row.status, row.scan_id, row.raw_metadata, row.file, row.reason = "skipped", scan_id, {}, None, reason
    row.finished_at = _now()
    job.scan_id = scan_id
    jobs.succeed(db, job, _result(row), message=f"{row.case_id} skipped: {reason}")


def _result(row: ImportCase, **extra: Any) -> dict[str, Any]:
    return {"run_id": row.run_id, "case_id": row.case_id, "outcome": row.status, "scan_id": row.scan_id, **extra}


def begin_case(db: Session, job: Job, worker: str) -> CaseWork | None:
    """Mark the job's case `running` (one more attempt); None, with the job finished, when there is nothing to do."""
    row = _case_row(db, job)
    if row is None:
        jobs.succeed(db, job, {"outcome": "gone"}, message="its import run or case no longer exists")
        return None
    if row.job_id != job.id:
        jobs.succeed(db, job, _result(row, superseded_by=row.job_id), message=f"superseded by job {row.job_id}")
        return None
    if row.status in ("imported", "skipped"):
        jobs.succeed(db, job, _result(row), message=f"{row.case_id} already {row.status}")
        return None
    run = db.get(ImportRun, row.run_id)
    assert run is not None
    scan_id = _scan_id(db, run.project_id, row.case_id)
    if scan_id is not None:
        _skip(db, job, row, scan_id, f"already in the project (scan {scan_id})")
        return None
    row.status, row.attempts, row.worker = "running", row.attempts + 1, worker[:200]
    row.started_at, row.finished_at, row.file, row.reason, row.notes = _now(), None, None, None, {}
    db.flush()
    return CaseWork(
        job_id=job.id,
        row_id=row.id,
        project_id=run.project_id,
        actor_id=run.created_by,
        root=Path(run.root),
        case_id=row.case_id,
        split=row.split or "train",
        raw_metadata=dict(row.raw_metadata or {}),
        structure_names=tuple(s.name for s in projects.structures_of(db, run.project_id)),
    )


def prepare_case(blobs: BlobStore, work: CaseWork, *, threads: int | None = None) -> scans.PreparedCase:
    """Read the case folder as it is now and decode, check and store its CT and masks (no database work)."""
    case = pants.read_pants_case(work.root, work.case_id, work.split, work.structure_names, work.raw_metadata)
    return scans.prepare_pants_case(blobs, case, root=work.root, threads=threads)


def _unique_case_violation(exc: IntegrityError) -> bool:
    return "uq_scans_project_case" in str(exc.orig)


def complete_case(db: Session, blobs: BlobStore, job: Job, work: CaseWork, prepared: scans.PreparedCase) -> str:
    """Write the case's rows, mark it imported and the job succeeded, in the caller's one transaction.

    Returns the outcome: 'imported', 'skipped' (another job or upload imported the case first; the unique
    (project, case id) keeps a case from being imported twice) or 'superseded' (a newer job owns the case).
    """
    started = time.perf_counter()
    row = db.get(ImportCase, work.row_id, with_for_update=True)
    if row is None or row.job_id != job.id or row.status != "running":
        jobs.succeed(db, job, {"outcome": "superseded"}, message="the case is no longer this job's")
        return "superseded"
    project = db.get(Project, work.project_id)
    assert project is not None
    actor = db.get(User, work.actor_id) if work.actor_id is not None else None
    try:
        with db.begin_nested():
            scan, version = scans.import_pants_case(db, blobs, project, actor, prepared.case, prepared)
    except (Conflict, IntegrityError) as exc:
        if isinstance(exc, IntegrityError) and not _unique_case_violation(exc):
            raise
        scan_id = _scan_id(db, project.id, work.case_id)
        if scan_id is None:
            raise
        _skip(db, job, row, scan_id, f"imported by another job or upload first (scan {scan_id})")
        return "skipped"
    timings = {**prepared.timings, "persist": round(time.perf_counter() - started, 3)}
    timings["total"] = round(prepared.timings.get("decode", 0.0) + timings["persist"], 3)
    row.status, row.scan_id, row.raw_metadata, row.timings = "imported", scan.id, {}, timings
    row.finished_at = _now()
    case = prepared.case
    row.notes = {
        key: value
        for key, value in (("missing_structures", case.missing_structures), ("unknown_files", case.unknown_files))
        if value
    }
    job.scan_id = scan.id
    result = _result(row, version_id=version.id if version else None, timings=timings, **row.notes)
    jobs.succeed(db, job, result, message=f"imported {work.case_id} as scan {scan.id} in {timings['total']:.1f} s")
    return "imported"


def describe_failure(error: BaseException) -> tuple[str | None, str]:
    """The file at fault (when the error names one) and a readable reason."""
    if isinstance(error, DomainError):
        file = error.details.get("file")
        return (str(file) if file else None), error.message
    return None, f"{type(error).__name__}: {error}"


def fail_case(db: Session, work: CaseWork, error: BaseException) -> None:
    """Record that the case failed, naming the file and the reason (unless a newer job owns the case)."""
    row = db.get(ImportCase, work.row_id, with_for_update=True)
    if row is None or row.job_id != work.job_id:
        return
    file, reason = describe_failure(error)
    row.status, row.file, row.reason, row.finished_at = "failed", file[:1000] if file else None, reason, _now()
