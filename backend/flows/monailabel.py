"""MONAI Label use cases: next sample (with the edit lease and the head given remembered per client), save a
label as a new version on that remembered base, run a model on one scan and wait for it, train.

Each writing flow is one transaction ending in one commit (the services flush).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.errors import InvalidInput, NotFound
from backend.flows import jobs as job_flows
from backend.jobs import service as jobs
from backend.labels import service as labels
from backend.models import Job, LabelVersion, Project, Scan, User
from backend.monailabel import service
from backend.registry import service as registry
from backend.workflow import service as workflow

STRATEGIES = ("priority", "random", "first")


def give_image(db: Session, scan: Scan, *, client_id: str, actor: User) -> Scan:
    """Remember the head a client is given with a scan's image (the base of its next save) and commit."""
    service.remember_base(db, actor, client_id, scan, scan.head_version_id)
    db.commit()
    return scan


def next_sample(db: Session, project: Project, strategy: str, *, client_id: str, actor: User, role: str) -> Scan | None:
    """The next scan for the caller by a strategy, with the edit lease taken and its head remembered; None if none."""
    if strategy not in STRATEGIES:
        raise InvalidInput(f"strategy must be one of {list(STRATEGIES)}", strategy=strategy)
    if strategy == "priority":
        task = workflow.next_task(db, project, actor, role, "annotate")
        scan = db.get(Scan, task.scan_id) if task is not None else None
    else:
        scan = service.pick_open_scan(db, project, strategy)
        if scan is not None:
            workflow.acquire_lease(db, scan, actor, role)
    if scan is None:
        return None
    service.remember_base(db, actor, client_id, scan, scan.head_version_id)
    db.commit()
    return scan


def save_label(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    label: service.DecodedLabel,
    *,
    client_id: str,
    message: str = "",
    actor: User,
) -> LabelVersion:
    """Save a client's label as a version on the head it was given (409 naming the head's author when stale).

    A combined map is compared with the map of that base: only the structures it changed are rewritten (as box
    patches), so the rest keep their exact masks, overlaps included. A .seg.nrrd replaces the masks it holds.
    """
    known, base = service.remembered_base(db, actor, client_id, scan)
    if not known:
        base = scan.head_version_id  # a client that never fetched the scan through us builds on the head it sees now
    author = labels.Author(user_id=actor.id)
    message = message or f"MONAI Label client {client_id}"
    if label.label_map is None or label.names is None:  # a .seg.nrrd: the masks it holds replace the base's
        version = labels.create_version(
            db, blobs, scan, author=author, kind="human", message=message, base_version_id=base, masks=label.masks or {}
        )
        service.remember_base(db, actor, client_id, scan, version.id)
        db.commit()
        return version
    base_version = labels.get_version(db, base) if base is not None else None
    # The base's map, kept from the client's previous save or label download when this process has it.
    base_map = labels.take_combined_map(db, blobs, base_version)[0] if base_version is not None else None
    try:
        patches = labels.patches_from_label_map(
            db,
            blobs,
            scan,
            base_version,
            label.label_map,
            label.names,
            filename=label.filename,
            declared=label.declared,
            given=base_map,
        )
        if patches:
            version = labels.save_patch(
                db, blobs, scan, author=author, base_version_id=base, patches=patches, message=message
            )
        else:  # the same label again: a version identical to its base, so the save is still recorded
            version = labels.create_version(
                db, blobs, scan, author=author, kind="human", message=message, base_version_id=base, masks={}
            )
        service.remember_base(db, actor, client_id, scan, version.id)
        db.commit()
    except BaseException:
        if base_version is not None and base_map is not None:
            labels.keep_combined_map(db, base_version, base_map)  # unchanged: the save never touched it
        raise
    if base_version is not None and base_map is not None:
        labels.keep_after_save(db, blobs, base_version, base_map, version, patches)
    return version


@dataclass(frozen=True)
class InferResult:
    """A pre-annotation job and, once it succeeded, the label version it wrote."""

    job: Job
    version: LabelVersion | None


def infer(
    db: Session,
    project: Project,
    scan: Scan,
    model_name: str,
    *,
    client_id: str,
    timeout_s: float,
    actor: User,
    poll_s: float = 0.2,
) -> InferResult:
    """Queue a pre-annotation of one scan with a model's promoted version and wait for it up to `timeout_s`."""
    registry.get_model_by_name(db, project.id, model_name)
    launch = job_flows.launch_preannotation(db, project, model_name=model_name, scan_ids=[scan.id], actor=actor)
    if not launch.jobs:
        raise InvalidInput(f"scan {scan.id} cannot be pre-annotated")
    job_id = launch.jobs[0].id
    deadline = time.monotonic() + timeout_s
    while True:
        # A fresh snapshot and no cached rows: the worker commits the job in another connection.
        db.rollback()
        db.expire_all()
        job = jobs.get_job(db, job_id)
        if job.status in ("succeeded", "failed", "cancelled") or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    version = None
    if job.status == "succeeded":
        version_id = (job.result or {}).get("label_version_id")
        version = db.get(LabelVersion, version_id) if version_id is not None else None
    if version is not None:
        _follow_model_version(db, scan, version, client_id=client_id, actor=actor)
    return InferResult(job=job, version=version)


def _follow_model_version(db: Session, scan: Scan, version: LabelVersion, *, client_id: str, actor: User) -> None:
    """The client now holds the model's version: when it became the head on top of the client's base, the client's
    next save builds on it (a human save meanwhile leaves the base as it was, so that save is still stale)."""
    db.refresh(scan)
    known, base = service.remembered_base(db, actor, client_id, scan)
    if known and scan.head_version_id == version.id and version.parent_id == base:
        service.remember_base(db, actor, client_id, scan, version.id)
        db.commit()


def train(db: Session, project: Project, model_name: str | None, *, actor: User) -> Job:
    """Queue training of a model (the named one, or the project's first trainable segmentation model) on the
    approved versions."""
    if model_name:
        model = registry.get_model_by_name(db, project.id, model_name)
    else:
        trainable = [
            m
            for m in registry.list_models(db, project.id)
            if registry.is_trainable(m.architecture) and registry.architecture_traits(m.architecture).preannotates
        ]
        if not trainable:
            raise NotFound("the project has no model to train")
        model = min(trainable, key=lambda m: m.id)
    return job_flows.launch_training(db, project, model, actor=actor)
