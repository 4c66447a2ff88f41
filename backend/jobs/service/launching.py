"""Launching jobs: which scans and model version a request names, and the jobs of pre-annotation, attention,
training and fusion (each created queued and sent once the caller's transaction commits)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.errors import Conflict, InvalidInput, NotFound
from backend.jobs.service.lifecycle import ACTIVE, create_job
from backend.labels import service as labels
from backend.models import Job, Model, ModelVersion, Project, ReaderSet, ScanTask, User
from backend.quality import service as quality
from backend.registry import service as registry
from backend.scans import service as scans
from backend.workflow import service as workflow

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
    registry.check_usable(version)  # weights refused (422) or still being checked (409) never run
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
    if not registry.architecture_traits(model.architecture).preannotates:
        raise InvalidInput(
            f"model {model.name!r} is a {model.architecture} model: it refines a structure from clicks (AI refine, "
            "MONAI Label infer with points) and does not pre-annotate; choose a segmentation model"
        )
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
    return registry.approved_version_ids(db, project_id)


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
    """A training job on the given approved label versions, or (None) on every approved version of the project."""
    if not registry.is_trainable(model.architecture):
        raise InvalidInput(f"a {model.architecture} model has no weights to train")
    # Only approved versions train (a given one that is not its scan's approved version is refused, naming it); an
    # empty selection is an error, not "all" (None: every approved version of the project).
    source = "approved" if label_version_ids is None else "given"
    ids = registry.check_training_versions(db, project.id, label_version_ids)
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
