"""Progress and report of import runs: counts per case status, the cases page by page, runs of a project.

A case whose job ended without finishing it (its worker was lost too often, a lead cancelled or failed the job)
still reads `pending` or `running` in its row; the report shows it as `failed`, with the job's error as the
reason, and a resume queues it again. So the report never waits on a case that nobody imports any more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.orm import Session

from backend.core.errors import InvalidInput, NotFound
from backend.models import ImportCase, ImportRun, Job
from backend.models.imports import IMPORT_CASE_STATUSES

_ABANDONED = and_(
    ImportCase.status.in_(("pending", "running")),
    or_(ImportCase.job_id.is_(None), Job.status.in_(("failed", "cancelled"))),
)
EFFECTIVE_STATUS: ColumnElement[str] = case((_ABANDONED, "failed"), else_=ImportCase.status)


@dataclass
class RunProgress:
    """A run with its counts per (effective) case status and what they imply."""

    run: ImportRun
    counts: dict[str, int] = field(default_factory=dict)
    finished_at: datetime | None = None
    imported_since_launch: int = 0

    @property
    def total(self) -> int:
        """Cases the run knows of (failed ones without a folder included)."""
        return sum(self.counts.values())

    @property
    def status(self) -> str:
        """'running' while a case is pending or running, else 'finished'."""
        return "running" if self.counts.get("pending", 0) + self.counts.get("running", 0) else "finished"

    @property
    def eta_s(self) -> float | None:
        """Seconds until the last case is done at the pace since the last launch (None before any import)."""
        left = self.counts.get("pending", 0) + self.counts.get("running", 0)
        if not left or not self.imported_since_launch:
            return None if left else 0.0
        elapsed = (datetime.now(UTC) - self.run.launched_at).total_seconds()
        return round(elapsed / self.imported_since_launch * left, 1)


@dataclass(frozen=True)
class CaseLine:
    """One case in a report: the row, its effective status and reason."""

    row: ImportCase
    status: str
    reason: str | None


def get_run(db: Session, run_id: int) -> ImportRun:
    """An import run by id."""
    run = db.get(ImportRun, run_id)
    if run is None:
        raise NotFound(f"import run {run_id} not found")
    return run


def _progress(db: Session, runs: Sequence[ImportRun]) -> list[RunProgress]:
    """Counts of several runs in one grouped query each."""
    out = {run.id: RunProgress(run) for run in runs}
    if not out:
        return []
    rows = db.execute(
        select(ImportCase.run_id, EFFECTIVE_STATUS, func.count(), func.max(ImportCase.finished_at))
        .outerjoin(Job, Job.id == ImportCase.job_id)
        .where(ImportCase.run_id.in_(list(out)))
        .group_by(ImportCase.run_id, EFFECTIVE_STATUS)
    ).all()
    for run_id, status, count, last in rows:
        progress = out[run_id]
        progress.counts[str(status)] = int(count)
        if last is not None and (progress.finished_at is None or last > progress.finished_at):
            progress.finished_at = last
    recent = db.execute(
        select(ImportCase.run_id, func.count())
        .join(ImportRun, ImportRun.id == ImportCase.run_id)
        .where(
            ImportCase.run_id.in_(list(out)),
            ImportCase.status == "imported",
            ImportCase.finished_at >= ImportRun.launched_at,
        )
        .group_by(ImportCase.run_id)
    ).all()
    for run_id, count in recent:
        out[run_id].imported_since_launch = int(count)
    for progress in out.values():
        for status in IMPORT_CASE_STATUSES:
            progress.counts.setdefault(status, 0)
        if progress.status == "running":
            progress.finished_at = None
    return [out[run.id] for run in runs]


def run_progress(db: Session, run: ImportRun) -> RunProgress:
    """A run's counts per case status."""
    return _progress(db, [run])[0]


def list_runs(db: Session, project_id: int, *, offset: int, limit: int) -> tuple[list[RunProgress], int]:
    """A project's import runs, newest launch first, with their counts; and how many runs there are."""
    total = db.scalar(select(func.count(ImportRun.id)).where(ImportRun.project_id == project_id)) or 0
    runs = db.scalars(
        select(ImportRun)
        .where(ImportRun.project_id == project_id)
        .order_by(ImportRun.launched_at.desc(), ImportRun.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return _progress(db, list(runs)), int(total)


def case_lines(
    db: Session, run: ImportRun, *, status: str | None, offset: int, limit: int
) -> tuple[list[CaseLine], int]:
    """A page of a run's cases by case id (optionally of one effective status), and how many match."""
    if status is not None and status not in IMPORT_CASE_STATUSES:
        raise InvalidInput(f"unknown case status {status!r}; use one of {list(IMPORT_CASE_STATUSES)}")
    query = select(ImportCase, EFFECTIVE_STATUS, Job.status, Job.error).outerjoin(Job, Job.id == ImportCase.job_id)
    query = query.where(ImportCase.run_id == run.id)
    counted = select(func.count(ImportCase.id)).outerjoin(Job, Job.id == ImportCase.job_id)
    counted = counted.where(ImportCase.run_id == run.id)
    if status is not None:
        query = query.where(EFFECTIVE_STATUS.in_((status,)))
        counted = counted.where(EFFECTIVE_STATUS.in_((status,)))
    total = int(db.scalar(counted) or 0)
    lines = []
    for row, effective, job_status, job_error in db.execute(
        query.order_by(ImportCase.case_id).offset(offset).limit(limit)
    ):
        reason = row.reason
        if effective == "failed" and row.status in ("pending", "running"):
            reason = _abandoned_reason(job_status, job_error)
        lines.append(CaseLine(row, str(effective), reason))
    return lines, total


def _abandoned_reason(job_status: str | None, job_error: str | None) -> str:
    if job_status is None:
        return "its import job no longer exists; launch the import again to retry it"
    if job_status == "cancelled":
        return "its import job was cancelled; launch the import again to retry it"
    return f"its import job failed: {job_error or 'no error recorded'}"


def finished_since(db: Session, run: ImportRun, after_id: int, since: datetime) -> list[CaseLine]:
    """Cases of a run that finished (imported, skipped or failed) at or after `since`, by finishing time; with
    `after_id`, rows already seen at that same instant are left out (the caller passes the last line's)."""
    query = (
        select(ImportCase, EFFECTIVE_STATUS, Job.status, Job.error)
        .outerjoin(Job, Job.id == ImportCase.job_id)
        .where(
            ImportCase.run_id == run.id,
            ImportCase.status.in_(("imported", "skipped", "failed")),
            ImportCase.finished_at.is_not(None),
            or_(ImportCase.finished_at > since, and_(ImportCase.finished_at == since, ImportCase.id > after_id)),
        )
        .order_by(ImportCase.finished_at, ImportCase.id)
        .limit(1000)
    )
    return [CaseLine(row, str(effective), row.reason) for row, effective, _status, _error in db.execute(query)]


def case_of_job(db: Session, job_id: int) -> CaseLine | None:
    """The case an import job works on, with its effective status."""
    found = db.execute(
        select(ImportCase, EFFECTIVE_STATUS, Job.status, Job.error)
        .outerjoin(Job, Job.id == ImportCase.job_id)
        .where(ImportCase.job_id == job_id)
    ).first()
    if found is None:
        return None
    row, effective, job_status, job_error = found
    reason = row.reason
    if effective == "failed" and row.status in ("pending", "running"):
        reason = _abandoned_reason(job_status, job_error)
    return CaseLine(row, str(effective), reason)


def runnable_job_ids(db: Session, run: ImportRun) -> list[int]:
    """Jobs of a run's unfinished cases that this process may claim (queued, or running: the claim decides)."""
    return list(
        db.scalars(
            select(Job.id)
            .join(ImportCase, ImportCase.job_id == Job.id)
            .where(
                ImportCase.run_id == run.id,
                ImportCase.status.in_(("pending", "running")),
                Job.status.in_(("queued", "running")),
            )
            .order_by(ImportCase.case_id)
        )
    )


@dataclass(frozen=True)
class LaunchCounts:
    """A launch's outcome as the command line reports it: cases imported by it, cases that were done before it
    (imported earlier, or already in the project), cases that failed, and cases still pending."""

    imported: int
    skipped: int
    failed: int
    unfinished: int


def launch_counts(db: Session, run: ImportRun) -> LaunchCounts:
    """Counts of the run's cases relative to its latest launch."""
    cases = (
        select(EFFECTIVE_STATUS.label("status"), (ImportCase.finished_at >= run.launched_at).label("recent"))
        .outerjoin(Job, Job.id == ImportCase.job_id)
        .where(ImportCase.run_id == run.id)
        .subquery()
    )
    rows = db.execute(select(cases.c.status, cases.c.recent, func.count()).group_by(cases.c.status, cases.c.recent))
    counts = {"imported": 0, "skipped": 0, "failed": 0, "unfinished": 0}
    for status, recent, count in rows:
        if status == "imported" and recent:
            counts["imported"] += int(count)
        elif status in ("imported", "skipped"):
            counts["skipped"] += int(count)
        elif status == "failed":
            counts["failed"] += int(count)
        else:
            counts["unfinished"] += int(count)
    return LaunchCounts(**counts)
