"""Job use cases: launch pre-annotation, attention, training, export, evaluation and fusion jobs; cancel, fail and
re-send them; the retrain policy after an approval.

Each flow is one transaction ending in one commit; the jobs it created reach the broker after that commit
(backend.jobs.outbox), so a task always finds its row and a rolled-back request sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.evaluation import service as evaluation
from backend.jobs import outbox
from backend.jobs import service as jobs
from backend.models import EvaluationRun, Job, Model, Project, ReaderSet, Scan, User
from backend.scans.service import ScanFilter
from backend.workflow import service as workflow


@dataclass(frozen=True)
class PreannotationLaunch:
    """The queued pre-annotation jobs, and the approved (read-only) scans that were left out."""

    jobs: list[Job]
    skipped: list[int]


def launch_preannotation(
    db: Session,
    project: Project,
    *,
    model_version_id: int | None = None,
    model_name: str | None = None,
    scan_ids: Sequence[int] | None = None,
    flt: ScanFilter | None = None,
    all_scans: bool = False,
    actor: User,
) -> PreannotationLaunch:
    """Queue one pre-annotation job per selected scan with a model version (or a model's promoted one).

    Approved scans are skipped; when only approved scans are selected it is refused (409 `scan_approved`).
    """
    model, version = jobs.resolve_model_version(db, project.id, model_version_id, model_name)
    chosen = jobs.select_scans(db, project, scan_ids=scan_ids, flt=flt, all_scans=all_scans)
    targets, skipped = jobs.preannotation_targets(db, project, chosen)
    launched = jobs.launch_preannotation(db, project, actor, model=model, version=version, scan_ids=targets)
    db.commit()
    return PreannotationLaunch(jobs=launched, skipped=skipped)


def launch_attention(
    db: Session,
    project: Project,
    *,
    scan_ids: Sequence[int] | None = None,
    flt: ScanFilter | None = None,
    all_scans: bool = False,
    model_version_ids: Sequence[int] | None = None,
    actor: User,
) -> list[Job]:
    """Queue attention-map jobs for the selected scans over the predictions of ≥ 2 model versions."""
    chosen = jobs.select_scans(db, project, scan_ids=scan_ids, flt=flt, all_scans=all_scans)
    launched = jobs.launch_attention(db, project, actor, scan_ids=chosen, model_version_ids=model_version_ids)
    db.commit()
    return launched


def launch_training(
    db: Session,
    project: Project,
    model: Model,
    *,
    label_version_ids: Sequence[int] | None = None,
    epochs: int = 20,
    heldout_fraction: float = 0.25,
    seed: int = 0,
    init: str = "promoted",
    actor: User,
) -> Job:
    """Queue fine-tuning of a model on label versions (default: the project's approved ones)."""
    job = jobs.launch_training(
        db,
        project,
        actor,
        model=model,
        label_version_ids=label_version_ids,
        epochs=epochs,
        heldout_fraction=heldout_fraction,
        seed=seed,
        init=init,
    )
    db.commit()
    return job


def launch_export(db: Session, project: Project, params: dict[str, Any], *, actor: User) -> Job:
    """Queue an export job with the parameters that `exports.service.validate_request` returned."""
    job = jobs.create_job(db, project_id=project.id, kind="export", created_by=actor.id, params=params)
    db.commit()
    return job


def launch_evaluation(
    db: Session, project: Project, request: evaluation.EvaluationRequest, *, actor: User
) -> tuple[EvaluationRun, Job]:
    """Create an evaluation run and queue its cpu job."""
    run, job = evaluation.launch(db, project, actor, request)
    db.commit()
    return run, job


def evaluate_now(
    db: Session,
    blobs: BlobStore,
    project: Project,
    request: evaluation.EvaluationRequest,
    *,
    actor: User,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationRun:
    """Run an evaluation in this process (no job), storing its results in one transaction."""
    run = evaluation.create_run(db, project, actor, request)
    evaluation.execute_run(db, blobs, run, progress=progress)
    db.commit()
    return run


def launch_fusion(db: Session, reader_set: ReaderSet, method: str, *, actor: User) -> Job:
    """Queue the fusion of a complete reader set (lead; majority vote or STAPLE) on the cpu queue."""
    job = jobs.launch_fusion(db, reader_set, actor, method)
    db.commit()
    return job


def cancel(db: Session, job: Job, *, actor: User, stale_after_s: float | None) -> Job:
    """Cancel a queued job (or one whose worker is gone) at once; ask a running one to stop."""
    cancelled = jobs.request_cancel(db, job, actor.id, stale_after_s)
    db.commit()
    return cancelled


def force_fail(db: Session, job: Job, reason: str | None, *, actor: User) -> Job:
    """End a stuck queued or running job as failed at once."""
    failed = jobs.force_fail(db, job, actor.id, reason)
    db.commit()
    return failed


def requeue_unsent(db: Session) -> list[Job]:
    """Send again the queued jobs whose message never reached the broker (it was down at their commit)."""
    unsent = jobs.unsent_jobs(db)
    outbox.send_after_commit(db, unsent)
    db.commit()
    return unsent


def requeue_stale(db: Session, *, stale_after_s: int) -> list[Job]:
    """Send again the queued jobs never sent, or waiting longer than stale_after_s (their message may be lost)."""
    stale = jobs.requeue_candidates(db, stale_after_s)
    outbox.send_after_commit(db, stale)
    db.commit()
    return stale


def after_approval(db: Session, scan: Scan) -> list[Job]:
    """The retrain policy once the scan is approved: a training job for each 'auto' model due for one.

    Part of the approving transaction (no commit here): its jobs are sent when that transaction commits. Nothing
    happens while the scan awaits a further review level.
    """
    if workflow.ensure_task(db, scan).state != "approved":
        return []
    return jobs.on_scan_approved(db, scan.project_id)
