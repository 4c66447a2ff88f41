"""MONAI Label use cases: next sample (with the edit lease and the head given remembered per client), save a
label as a new version on that remembered base, run a model on one scan and wait for it, train.

Each writing flow is one transaction ending in one commit (the services flush).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.errors import InvalidInput, NotFound
from backend.flows import jobs as job_flows
from backend.jobs import service as jobs
from backend.labels import service as labels
from backend.models import Job, LabelVersion, Model, MonaiLabelClient, Project, Scan, ScanTask, User
from backend.workflow import service as workflow

STRATEGIES = ("priority", "random", "first")
OPEN_STATES = ("new", "annotating", "changes_requested")


def remembered_base(db: Session, user: User, client_id: str, scan: Scan) -> tuple[bool, int | None]:
    """Whether this client was given the scan, and the head it was given then."""
    row = db.get(MonaiLabelClient, (user.id, client_id, scan.id))
    return (row is not None, row.base_version_id if row is not None else None)


def _remember(db: Session, user: User, client_id: str, scan: Scan, version_id: int | None) -> None:
    row = db.get(MonaiLabelClient, (user.id, client_id, scan.id))
    if row is None:
        db.add(MonaiLabelClient(user_id=user.id, client_id=client_id, scan_id=scan.id, base_version_id=version_id))
    else:
        row.base_version_id = version_id
    db.flush()


def give_image(db: Session, scan: Scan, *, client_id: str, actor: User) -> Scan:
    """Remember the head a client is given with a scan's image (the base of its next save) and commit."""
    _remember(db, actor, client_id, scan, scan.head_version_id)
    db.commit()
    return scan


def _pick(db: Session, project: Project, strategy: str) -> Scan | None:
    query = (
        select(Scan)
        .join(ScanTask, ScanTask.scan_id == Scan.id)
        .where(Scan.project_id == project.id, ScanTask.state.in_(OPEN_STATES))
    )
    if strategy == "first":
        return db.scalars(query.order_by(Scan.id).limit(1)).first()
    count = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    if count == 0:
        return None
    return db.scalars(query.order_by(Scan.id).offset(random.randrange(count)).limit(1)).first()


def next_sample(db: Session, project: Project, strategy: str, *, client_id: str, actor: User, role: str) -> Scan | None:
    """The next scan for the caller by a strategy, with the edit lease taken and its head remembered; None if none."""
    if strategy not in STRATEGIES:
        raise InvalidInput(f"strategy must be one of {list(STRATEGIES)}", strategy=strategy)
    if strategy == "priority":
        task = workflow.next_task(db, project, actor, role, "annotate")
        scan = db.get(Scan, task.scan_id) if task is not None else None
    else:
        scan = _pick(db, project, strategy)
        if scan is not None:
            workflow.acquire_lease(db, scan, actor, role)
    if scan is None:
        return None
    _remember(db, actor, client_id, scan, scan.head_version_id)
    db.commit()
    return scan


def save_label(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    masks: Mapping[str, np.ndarray],
    *,
    client_id: str,
    message: str = "",
    actor: User,
) -> LabelVersion:
    """Save a client's label as a version on the head it was given (409 naming the head's author when stale)."""
    known, base = remembered_base(db, actor, client_id, scan)
    if not known:
        base = scan.head_version_id  # a client that never fetched the scan through us builds on the head it sees now
    version = labels.create_version(
        db,
        blobs,
        scan,
        author=labels.Author(user_id=actor.id),
        kind="human",
        message=message or f"MONAI Label client {client_id}",
        base_version_id=base,
        masks=masks,
    )
    _remember(db, actor, client_id, scan, version.id)
    db.commit()
    return version


@dataclass(frozen=True)
class InferResult:
    """A pre-annotation job and, once it succeeded, the label version it wrote."""

    job: Job
    version: LabelVersion | None


def _model(db: Session, project: Project, name: str) -> Model:
    model = db.scalar(select(Model).where(Model.project_id == project.id, Model.name == name))
    if model is None:
        raise NotFound(f"model {name!r} not found")
    return model


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
    _model(db, project, model_name)
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
    known, base = remembered_base(db, actor, client_id, scan)
    if known and scan.head_version_id == version.id and version.parent_id == base:
        _remember(db, actor, client_id, scan, version.id)
        db.commit()


def train(db: Session, project: Project, model_name: str | None, *, actor: User) -> Job:
    """Queue training of a model (the named one, or the project's first trainable) on the approved versions."""
    if model_name:
        model = _model(db, project, model_name)
    else:
        first = db.scalars(select(Model).where(Model.project_id == project.id).order_by(Model.id)).first()
        if first is None:
            raise NotFound("the project has no model to train")
        model = first
    return job_flows.launch_training(db, project, model, actor=actor)
