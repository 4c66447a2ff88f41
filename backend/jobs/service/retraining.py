"""The retrain policy: after an approval, an 'auto' model that reached its N new approvals trains again."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.jobs.service.launching import approved_version_ids, launch_training
from backend.jobs.service.lifecycle import ACTIVE
from backend.models import Job, LabelVersionStructure, Model, ScanTask, TrainingRound
from backend.projects import service as projects
from backend.registry import service as registry

AUTO_TRAINING_EPOCHS = 20
AUTO_HELDOUT_FRACTION = 0.25


def _training_jobs(db: Session, model: Model) -> list[Job]:
    """The training jobs of a model, oldest first."""
    rows = db.scalars(select(Job).where(Job.project_id == model.project_id, Job.kind == "train").order_by(Job.id))
    return [job for job in rows if int(job.params.get("model_id", 0)) == model.id]


def _approvals_since_last_round(db: Session, model: Model) -> int:
    """Scans of the model's project approved since the data of its last training round was taken (its launch)."""
    last = db.scalar(
        select(TrainingRound).where(TrainingRound.model_id == model.id).order_by(TrainingRound.id.desc()).limit(1)
    )
    query = select(func.count()).where(
        ScanTask.project_id == model.project_id, ScanTask.approved_version_id.is_not(None)
    )
    if last is not None:
        launched = db.scalar(select(Job.created_at).where(Job.id == last.job_id)) if last.job_id else None
        query = query.where(ScanTask.approved_at > (launched or last.created_at))
    return int(db.scalar(query) or 0)


def _trainable_versions(db: Session, model: Model, version_ids: Sequence[int]) -> list[int]:
    """The versions in which every structure of the model is present (the others cannot be trained on)."""
    if not version_ids:
        return []
    schema = projects.structures_of(db, model.project_id)
    wanted = {projects.find_structure(schema, name).id for name in model.structures}
    present: dict[int, set[int]] = {}
    rows = db.execute(
        select(LabelVersionStructure.version_id, LabelVersionStructure.structure_id).where(
            LabelVersionStructure.version_id.in_(list(version_ids)), LabelVersionStructure.status == "present"
        )
    )
    for version_id, structure_id in rows.all():
        present.setdefault(int(version_id), set()).add(int(structure_id))
    return [v for v in version_ids if wanted <= present.get(v, set())]


def on_scan_approved(db: Session, project_id: int) -> list[Job]:
    """After an approval: launch a training job for each 'auto' model that reached its N new approvals.

    Counts the scans approved since the model's last training round was launched; at ≥ N (and no training of that
    model already queued or running) it trains on every approved version holding the model's structures (at least
    two: one is held out). The jobs are sent once the caller's transaction commits.
    """
    project = projects.get_project(db, project_id)
    launched: list[Job] = []
    for model in registry.list_models(db, project_id):
        every = model.retrain_every_approvals
        if model.promotion_policy != "auto" or not every or not registry.is_trainable(model.architecture):
            continue
        if any(job.status in ACTIVE for job in _training_jobs(db, model)):
            continue
        approvals = _approvals_since_last_round(db, model)
        if approvals < every:
            continue
        versions = _trainable_versions(db, model, approved_version_ids(db, project_id))
        if len(versions) < 2:
            continue
        epochs = int(dict(model.config.get("training") or {}).get("epochs", AUTO_TRAINING_EPOCHS))
        launched.append(
            launch_training(
                db,
                project,
                None,
                model=model,
                label_version_ids=versions,
                epochs=epochs,
                heldout_fraction=AUTO_HELDOUT_FRACTION,
                trigger=f"{approvals} approvals (auto policy, every {every})",
            )
        )
    return launched
