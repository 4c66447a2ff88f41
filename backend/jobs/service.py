"""Jobs: create, claim (conditional UPDATE), heartbeat and progress, finish, fail, cancel, queue position."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core import queue
from backend.core.errors import Conflict, InvalidInput, NotFound
from backend.labels import service as labels
from backend.models import (
    Job,
    LabelVersionStructure,
    Model,
    ModelVersion,
    Project,
    ReaderSet,
    ScanTask,
    TrainingRound,
    User,
)
from backend.models.jobs import JOB_KINDS, JOB_STATUSES
from backend.projects import service as projects
from backend.quality import service as quality
from backend.registry import service as registry
from backend.scans import service as scans
from backend.workflow import service as workflow

ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
QUEUE_OF_KIND = {"preannotate": "gpu", "train": "gpu", "attention": "cpu", "import": "cpu", "export": "cpu"}
QUEUE_OF_KIND["fuse"] = "cpu"


def _now() -> datetime:
    return datetime.now(UTC)


def create_job(
    db: Session,
    *,
    project_id: int,
    kind: str,
    created_by: int | None,
    params: dict[str, Any] | None = None,
    scan_id: int | None = None,
    model_version_id: int | None = None,
) -> Job:
    """Record a queued job (the caller enqueues it after commit)."""
    if kind not in JOB_KINDS:
        raise InvalidInput(f"unknown job kind {kind!r}")
    job = Job(
        project_id=project_id,
        kind=kind,
        queue=QUEUE_OF_KIND.get(kind, "cpu"),
        status="queued",
        params=params or {},
        scan_id=scan_id,
        model_version_id=model_version_id,
        created_by=created_by,
        message="waiting in the queue",
    )
    db.add(job)
    db.flush()
    audit.record(
        db,
        actor_user_id=created_by,
        action="job.create",
        entity_type="job",
        entity_id=job.id,
        project_id=project_id,
        scan_id=scan_id,
        details={"kind": kind, "model_version_id": model_version_id},
    )
    return job


def get_job(db: Session, job_id: int) -> Job:
    """A job by id."""
    job = db.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def queue_positions(db: Session, jobs: Sequence[Job]) -> dict[int, int]:
    """1-based position of each queued job in its queue (jobs ahead of it that are still queued, plus one)."""
    out: dict[int, int] = {}
    for job in jobs:
        if job.status != "queued":
            continue
        ahead = db.scalar(
            select(func.count(Job.id)).where(Job.queue == job.queue, Job.status == "queued", Job.id < job.id)
        )
        out[job.id] = int(ahead or 0) + 1
    return out


def list_jobs(
    db: Session, project_id: int, *, status: str | None, kind: str | None, offset: int, limit: int
) -> tuple[list[Job], int]:
    """A project's jobs, newest first, with the total."""
    query = select(Job).where(Job.project_id == project_id)
    if status:
        if status not in JOB_STATUSES:
            raise InvalidInput(f"unknown status {status!r}; use one of {list(JOB_STATUSES)}")
        query = query.where(Job.status == status)
    if kind:
        query = query.where(Job.kind == kind)
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = db.scalars(query.order_by(Job.id.desc()).offset(offset).limit(limit))
    return list(rows), int(total)


def claim(db: Session, job_id: int, worker: str, *, stale_after_s: int, max_attempts: int) -> Job | None:
    """Take a job for this worker: queued, or running with a stale heartbeat (its worker died). None if not ours.

    The conditional UPDATE makes two workers that receive the same message agree on one owner.
    """
    now = _now()
    stale = now - timedelta(seconds=stale_after_s)
    claimable = or_(
        Job.status == "queued",
        (Job.status == "running") & (or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale)),
    )
    moved = db.execute(
        update(Job)
        .where(Job.id == job_id, claimable, Job.cancel_requested.is_(False), Job.attempts < max_attempts)
        .values(
            status="running",
            attempts=Job.attempts + 1,
            worker=worker,
            started_at=now,
            heartbeat_at=now,
            message="started",
            error=None,
        )
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        job = db.get(Job, job_id)
        if job is not None:
            db.refresh(job)
            _settle_unclaimable(db, job, max_attempts)
        return None
    job = db.get(Job, job_id)
    assert job is not None
    db.refresh(job)
    return job


def _settle_unclaimable(db: Session, job: Job, max_attempts: int) -> None:
    """A job nobody may claim any more gets a final state instead of hanging in the list."""
    if job.status in ACTIVE and job.cancel_requested:
        _finalise(db, job, "cancelled", message="cancelled before it ran")
    elif job.status in ACTIVE and job.attempts >= max_attempts:
        _finalise(db, job, "failed", message="gave up", error=f"the job's worker was lost {job.attempts} times")


def heartbeat(db: Session, job_id: int, worker: str, progress: float, message: str) -> bool:
    """Record progress of a running job owned by worker; returns False when the job was cancelled or taken over."""
    moved = db.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.worker == worker)
        .values(progress=max(0.0, min(100.0, progress)), message=message[:500], heartbeat_at=_now())
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return False
    cancel = db.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return not cancel


def _finalise(db: Session, job: Job, status: str, *, message: str, error: str | None = None) -> None:
    job.status = status
    job.message = message[:500]
    job.error = error
    job.finished_at = _now()
    if status == "succeeded":
        job.progress = 100.0
    db.flush()
    audit.record(
        db,
        actor_user_id=job.created_by,
        action=f"job.{status}",
        entity_type="job",
        entity_id=job.id,
        project_id=job.project_id,
        scan_id=job.scan_id,
        details={"kind": job.kind, "error": error, "result": job.result},
    )


def succeed(db: Session, job: Job, result: dict[str, Any], message: str = "done") -> None:
    """Mark a job done with what it produced."""
    job.result = result
    _finalise(db, job, "succeeded", message=message)


def fail(db: Session, job_id: int, error: str) -> None:
    """Mark a job failed with a readable error (its partial outputs were never committed)."""
    job = get_job(db, job_id)
    if job.status in FINAL:
        return
    _finalise(db, job, "failed", message="failed", error=error[:10_000])


def mark_cancelled(db: Session, job_id: int) -> None:
    """Record that the worker stopped a job on request."""
    job = get_job(db, job_id)
    if job.status not in FINAL:
        _finalise(db, job, "cancelled", message="cancelled")


def request_cancel(db: Session, job: Job, actor_user_id: int, stale_after_s: float | None = None) -> Job:
    """Cancel a queued job at once; ask a running one to stop at its next progress report.

    A running job whose heartbeat is already older than stale_after_s has lost its worker: it is cancelled now
    (were the worker only slow, its next heartbeat finds the job no longer running and it stops without writing).
    """
    if job.status in FINAL:
        raise Conflict(f"job {job.id} already {job.status}", status=job.status)
    job.cancel_requested = True
    beat = job.heartbeat_at
    lost = stale_after_s is not None and (beat is None or beat < _now() - timedelta(seconds=stale_after_s))
    if job.status == "queued":
        _finalise(db, job, "cancelled", message=f"cancelled by user {actor_user_id}")
    elif lost:
        _finalise(db, job, "cancelled", message=f"cancelled by user {actor_user_id} (its worker was lost)")
    else:
        job.message = "cancelling"
        db.flush()
    return job


def force_fail(db: Session, job: Job, actor_user_id: int, reason: str | None) -> Job:
    """A lead ends a stuck job as failed at once; a worker still on it stops at its next heartbeat."""
    if job.status in FINAL:
        raise Conflict(f"job {job.id} already {job.status}", status=job.status)
    job.cancel_requested = True  # a live worker sees the request and writes nothing
    error = f"failed by user {actor_user_id}" + (f": {reason}" if reason else "")
    _finalise(db, job, "failed", message=f"failed by user {actor_user_id}", error=error)
    audit.record(
        db,
        actor_user_id=actor_user_id,
        action="job.force_fail",
        entity_type="job",
        entity_id=job.id,
        project_id=job.project_id,
        scan_id=job.scan_id,
        details={"kind": job.kind, "reason": reason, "worker": job.worker},
    )
    return job


UNSENT_PREFIX = "not yet sent"


def requeue_candidates(db: Session, stale_after_s: int) -> list[Job]:
    """Queued jobs that never reached the broker, or older than stale_after_s (a lost message), to send again."""
    cutoff = _now() - timedelta(seconds=stale_after_s)
    return list(
        db.scalars(
            select(Job)
            .where(Job.status == "queued", or_(Job.created_at < cutoff, Job.message.startswith(UNSENT_PREFIX)))
            .order_by(Job.id)
        )
    )


MAX_SCANS_PER_REQUEST = 50_000


def resolve_model_version(
    db: Session, project_id: int, model_version_id: int | None, model_name: str | None
) -> tuple[Model, ModelVersion]:
    """The model version a request names, or the promoted version of a named model."""
    if model_version_id is not None:
        version = registry.get_model_version(db, model_version_id)
        model = registry.get_model(db, version.model_id)
    elif model_name:
        model = registry.get_model_by_name(db, project_id, model_name)
        promoted = registry.promoted_version(db, model)
        if promoted is None:
            raise InvalidInput(f"model {model_name!r} has no promoted version; promote one or name a version")
        version = promoted
    else:
        raise InvalidInput("name a model (its promoted version is used) or a model_version_id")
    if model.project_id != project_id:
        raise NotFound(f"model version {version.id} not found in this project")
    return model, version


def select_scans(
    db: Session, project: Project, *, scan_ids: Sequence[int] | None, flt: scans.ScanFilter | None, all_scans: bool
) -> list[int]:
    """The scans a batch request targets: explicit ids, a metadata filter, or the whole project."""
    chosen = sum(x for x in (scan_ids is not None, flt is not None, all_scans))
    if chosen != 1:
        raise InvalidInput("choose exactly one of scan_ids, filter, or all")
    if scan_ids is not None:
        ids = list(dict.fromkeys(scan_ids))
        for scan_id in ids:
            scan = scans.get_scan(db, scan_id)
            if scan.project_id != project.id:
                raise NotFound(f"scan {scan_id} not found")
    else:
        ids = scans.scan_ids_matching(db, project.id, flt or scans.ScanFilter())
    if not ids:
        raise InvalidInput("no scan matches the request")
    if len(ids) > MAX_SCANS_PER_REQUEST:
        raise InvalidInput(f"{len(ids)} scans in one request; the limit is {MAX_SCANS_PER_REQUEST}")
    return ids


def preannotation_targets(db: Session, project: Project, scan_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """Split the selected scans into those to pre-annotate and the approved ones, which are skipped.

    An approved scan is read-only (its model version would be refused when the job runs). When every selected
    scan is approved there is nothing to do: 409 `scan_approved`, naming the scans and how to reopen them.
    """
    approved = set(
        db.scalars(select(ScanTask.scan_id).where(ScanTask.project_id == project.id, ScanTask.state == "approved"))
    )
    targets = [i for i in scan_ids if i not in approved]
    skipped = [i for i in scan_ids if i in approved]
    if not targets and skipped:
        if len(skipped) == 1:
            scan = scans.get_scan(db, skipped[0])
            what = f"scan {scan.id} ({scan.case_id}) is approved and read-only: its pre-annotation would be refused"
            url = f"/api/scans/{scan.id}/transitions"
        else:
            named = ", ".join(str(i) for i in skipped[:20]) + (" …" if len(skipped) > 20 else "")
            what = f"all {len(skipped)} selected scans are approved and read-only ({named}): nothing to pre-annotate"
            url = "/api/scans/{id}/transitions"
        raise workflow.ScanApproved(
            f"{what}; a lead can reopen a scan first (POST {url} with action 'reopen')",
            skipped_approved=skipped[:1000],
        )
    return targets, skipped


def launch_preannotation(
    db: Session, project: Project, actor: User, *, model: Model, version: ModelVersion, scan_ids: Sequence[int]
) -> list[Job]:
    """One pre-annotation job per scan with the given model version; approved scans are skipped."""
    targets, _ = preannotation_targets(db, project, scan_ids)
    return [
        create_job(
            db,
            project_id=project.id,
            kind="preannotate",
            created_by=actor.id,
            scan_id=scan_id,
            model_version_id=version.id,
            params={"model": model.name, "model_version_number": version.number},
        )
        for scan_id in targets
    ]


def launch_attention(
    db: Session, project: Project, actor: User, *, scan_ids: Sequence[int], model_version_ids: Sequence[int] | None
) -> list[Job]:
    """One attention job per scan, over the newest predictions of ≥ 2 model versions."""
    if model_version_ids is not None:
        if len(set(model_version_ids)) < 2:
            raise InvalidInput("attention needs predictions of at least two model versions")
        for version_id in model_version_ids:
            model = registry.get_model(db, registry.get_model_version(db, version_id).model_id)
            if model.project_id != project.id:
                raise NotFound(f"model version {version_id} not found in this project")
    thresholds = attention_thresholds(project)
    return [
        create_job(
            db,
            project_id=project.id,
            kind="attention",
            created_by=actor.id,
            scan_id=scan_id,
            params={"model_version_ids": list(model_version_ids or []), "thresholds": thresholds},
        )
        for scan_id in scan_ids
    ]


def attention_thresholds(project: Project) -> dict[str, float]:
    """The project's attention thresholds (AbdomenAtlas defaults: std > 0.1, entropy > 0.05)."""
    configured = dict(project.settings.get("attention", {}))
    return {
        "std": float(configured.get("std", 0.1)),
        "entropy": float(configured.get("entropy", 0.05)),
        "erosion_iterations": int(configured.get("erosion_iterations", 2)),
        "dilation_iterations": int(configured.get("dilation_iterations", 2)),
    }


def approved_version_ids(db: Session, project_id: int) -> list[int]:
    """The approved label version of every approved scan of a project (``ScanTask.approved_version_id``)."""
    rows = db.scalars(
        select(ScanTask.approved_version_id)
        .where(ScanTask.project_id == project_id, ScanTask.approved_version_id.is_not(None))
        .order_by(ScanTask.scan_id)
    )
    return [int(v) for v in rows if v is not None]


def launch_training(
    db: Session,
    project: Project,
    actor: User | None,
    *,
    model: Model,
    label_version_ids: Sequence[int] | None,
    epochs: int,
    heldout_fraction: float,
    seed: int = 0,
    init: str = "promoted",
    trigger: str = "manual",
) -> Job:
    """A training job on the given label versions, or (none given) on the project's approved versions."""
    if model.architecture == "classical":
        raise InvalidInput("the classical pre-annotator has no weights to train")
    source = "given"
    if not label_version_ids:
        label_version_ids, source = approved_version_ids(db, project.id), "approved"
        if not label_version_ids:
            raise InvalidInput(
                "no approved label versions in this project to train on; approve scans in review "
                "or pass label_version_ids"
            )
    ids = list(dict.fromkeys(label_version_ids))
    if len(ids) < 2:
        raise InvalidInput("training needs at least two label versions (one is held out)")
    scans_seen: set[int] = set()
    for version_id in ids:
        version = labels.get_version(db, version_id)
        scan = scans.get_scan(db, version.scan_id)
        if scan.project_id != project.id:
            raise NotFound(f"label version {version_id} not found in this project")
        if scan.id in scans_seen:
            raise InvalidInput(f"two versions of scan {scan.id} given; train on one version per scan")
        scans_seen.add(scan.id)
    if init not in ("promoted", "scratch"):
        raise InvalidInput("init must be 'promoted' (fine-tune) or 'scratch'")
    if not 0.0 < heldout_fraction < 1.0:
        raise InvalidInput("heldout_fraction must be between 0 and 1")
    promoted = registry.promoted_version(db, model)
    return create_job(
        db,
        project_id=project.id,
        kind="train",
        created_by=actor.id if actor is not None else None,
        model_version_id=promoted.id if promoted else None,
        params={
            "model_id": model.id,
            "label_version_ids": ids,
            "epochs": epochs,
            "heldout_fraction": heldout_fraction,
            "seed": seed,
            "init": init,
            "versions": source,
            "trigger": trigger,
        },
    )


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
    two: one is held out). The caller commits, then ``dispatch``es the returned jobs.
    """
    project = db.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} not found")
    launched: list[Job] = []
    for model in registry.list_models(db, project_id):
        every = model.retrain_every_approvals
        if model.promotion_policy != "auto" or not every or model.architecture == "classical":
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


TASK_OF_KIND = {"preannotate": queue.TASK_PREANNOTATE, "attention": queue.TASK_ATTENTION, "train": queue.TASK_TRAIN}
TASK_OF_KIND["export"] = queue.TASK_EXPORT
TASK_OF_KIND["evaluate"] = queue.TASK_EVALUATE
TASK_OF_KIND["fuse"] = queue.TASK_FUSE


def fusion_job_of(db: Session, reader_set: ReaderSet) -> Job | None:
    """The newest `fuse` job of a reader set (any status), or None."""
    rows = db.scalars(select(Job).where(Job.kind == "fuse", Job.scan_id == reader_set.scan_id).order_by(Job.id.desc()))
    return next((job for job in rows if (job.params or {}).get("reader_set_id") == reader_set.id), None)


def launch_fusion(db: Session, reader_set: ReaderSet, actor: User, method: str) -> Job:
    """Queue the fusion of a complete reader set on the cpu queue (checked now: lead, method, set status).

    One fusion job per set at a time: another while one is queued or running is refused (409).
    """
    quality.check_fusion(db, reader_set, actor, method)
    active = fusion_job_of(db, reader_set)
    if active is not None and active.status in ACTIVE:
        raise Conflict(
            f"reader set {reader_set.id} is already being fused by job {active.id} ({active.status})",
            job_id=active.id,
        )
    return create_job(
        db,
        project_id=reader_set.project_id,
        kind="fuse",
        created_by=actor.id,
        scan_id=reader_set.scan_id,
        params={"reader_set_id": reader_set.id, "method": method},
    )


def dispatch(db: Session, jobs: Sequence[Job], *, resend: bool = False) -> None:
    """Send committed jobs to the broker (called after the request's commit, so a task always finds its row).

    A broker that cannot be reached leaves the job queued with a message; the workers' reaper (or
    `maskloop jobs --requeue`) resends it. A re-send gets a new task id (`job-<id>-r<attempts>-<time>`).
    """
    for job in jobs:
        attempt: int | str = f"r{job.attempts}-{int(_now().timestamp() * 1000)}" if resend else 0
        try:
            queue.send(TASK_OF_KIND[job.kind], job.id, job.queue, attempt)
        except Exception as exc:
            job.message = f"{UNSENT_PREFIX} to the {job.queue} queue: {type(exc).__name__}: {exc}"[:500]
        else:
            job.sent_at = _now()  # the reaper re-sends a queued job whose message was lost long after this
            if job.message.startswith(UNSENT_PREFIX):
                job.message = "waiting in the queue"
    db.flush()
