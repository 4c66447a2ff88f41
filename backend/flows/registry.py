"""Model registry use cases: register a model, change its promotion policy, upload weights (checked by a worker),
promote or roll back a version, and score the models' drafts when a scan is approved.

Why uploaded weights are checked by a worker, and how the upload waits for it: the API process never imports
torch, so it cannot load a state dict into a network. An upload therefore stores the weights blob and a model
version with ``weights_status='pending'`` and queues a ``check_weights`` job on the cpu queue in the same commit. A
worker builds the model's network (its architecture, config and one output per structure), loads the state dict
strictly (``torch.load(weights_only=True)``; missing, unexpected or mis-shaped tensors are refused) and runs one
forward pass of the model's predictor on a tiny phantom volume, requiring finite probabilities of the right
shape; it marks the version 'valid', or 'invalid' with the reason. The upload waits for that verdict
(``weights_check_wait_s``, giving up early when no worker takes the job within ``weights_check_claim_wait_s``):
garbage or a shape-mismatched state dict answers 422 with the reason, good weights 201 'valid'. When no worker
answers in time the answer is 201 with 'pending', and the version can be neither promoted (409) nor used by a
job until its check has passed, so nothing unchecked ever runs. A refused version stays listed as 'invalid'
with its reason (an honest record of the upload); it can never be promoted or used.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.errors import DomainError, InvalidInput
from backend.jobs import service as jobs
from backend.labels import service as labels
from backend.models import LabelVersion, Model, ModelVersion, Project, Scan, User
from backend.projects import service as projects
from backend.registry import service as registry

_POLL_S = 0.1


def register_model(
    db: Session,
    project: Project,
    *,
    name: str,
    architecture: str,
    structures: Sequence[str],
    config: dict[str, Any] | None = None,
    preprocessing: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
    promotion_policy: str = "manual",
    retrain_every_approvals: int | None = None,
    actor: User,
) -> Model:
    """Register a model of the project (its structures from the project's schema)."""
    model = registry.create_model(
        db,
        project.id,
        name=name,
        architecture=architecture,
        structures=structures,
        config=config,
        preprocessing=preprocessing,
        inference=inference,
        promotion_policy=promotion_policy,
        retrain_every_approvals=retrain_every_approvals,
        actor_user_id=actor.id,
    )
    db.commit()
    return model


def set_promotion_policy(db: Session, model: Model, promotion: dict[str, Any], *, actor: User) -> Model:
    """Change a model's promotion policy (manual, or auto: retrain after every N approvals, promote on a win)."""
    registry.update_promotion(db, model, promotion, actor_user_id=actor.id)
    db.commit()
    return model


def add_version(
    db: Session,
    blobs: BlobStore,
    model: Model,
    *,
    weights: bytes,
    provenance: dict[str, Any],
    validation: dict[str, Any],
    actor: User,
    wait_s: float = 0.0,
    claim_wait_s: float = 0.0,
) -> ModelVersion:
    """Register uploaded weights as the model's next version (not promoted), checked by a worker first.

    The version is stored 'pending' with a `check_weights` job (one commit); then this waits up to ``wait_s`` for
    the worker's verdict (see the module docstring). Refused weights raise InvalidInput (422) with the reason.
    """
    version = registry.add_version(
        db,
        blobs,
        model,
        weights=weights,
        provenance=provenance,
        validation=validation,
        weights_status="pending",
        actor_user_id=actor.id,
    )
    if version.weights_status == "pending":
        job = jobs.create_job(
            db,
            project_id=model.project_id,
            kind="check_weights",
            created_by=actor.id,
            model_version_id=version.id,
            params={"model_id": model.id, "model_version_id": version.id, "number": version.number},
        )
        version.weights_check = {"job_id": job.id}
    db.commit()
    if version.weights_status == "pending" and wait_s > 0:
        version = _await_check(db, version.id, int(version.weights_check["job_id"]), wait_s, claim_wait_s)
    if version.weights_status == "invalid":
        reason = str(version.weights_check.get("reason") or "they do not fit the architecture")
        raise InvalidInput(
            f"weights refused: {reason}",
            model_version_id=version.id,
            number=version.number,
            job_id=version.weights_check.get("job_id"),
        )
    return version


def _await_check(db: Session, version_id: int, job_id: int, wait_s: float, claim_wait_s: float) -> ModelVersion:
    """Poll (one short read transaction each) until the check ends, nobody claims it in time, or ``wait_s`` passes."""
    started = time.monotonic()
    while True:
        db.expire_all()
        version = registry.get_model_version(db, version_id)
        job = jobs.get_job(db, job_id)
        status, job_status = version.weights_status, job.status
        db.commit()  # ends the read transaction: the worker's commit is seen by the next look
        waited = time.monotonic() - started
        if status != "pending" or job_status in jobs.FINAL or waited >= wait_s:
            return version
        if job_status == "queued" and waited >= claim_wait_s:
            return version
        time.sleep(_POLL_S)


def promote(db: Session, version: ModelVersion, *, actor: User, reason: str = "") -> ModelVersion:
    """Promote a version: refused unless its weights were checked and it passed the promotion gate against the
    promoted one on their shared held-out set (the decision is recorded)."""
    promoted = registry.promote(db, version, actor.id, reason=reason)
    db.commit()
    return promoted


def roll_back(db: Session, version: ModelVersion, *, reason: str, actor: User) -> ModelVersion:
    """Make an earlier version the promoted one again, recorded as a decision with the lead's reason."""
    restored = registry.rollback(db, version, reason=reason, actor_user_id=actor.id)
    db.commit()
    return restored


def score_approval(db: Session, blobs: BlobStore, scan: Scan, final: LabelVersion) -> list[registry.DraftDice]:
    """Record, for every model version that pre-annotated the scan, the Dice of each structure it predicted against
    the approved version (part of the approving transaction; no commit here).

    Only the structures the model predicted count (`registry.predicted_structures`), not those its label version
    inherited from its parent. A later approval of the same scan replaces the rows.
    """
    schema = {s.name: s for s in projects.structures_of(db, scan.project_id)}
    rows: list[registry.DraftDice] = []
    for model_version_id, draft in registry.model_drafts(db, scan.id):
        predicted = set(registry.predicted_structures(db, draft) or [])
        for diff in labels.diff_versions(db, blobs, draft, final):
            if diff.structure in predicted and diff.dice is not None and diff.structure in schema:
                rows.append(registry.DraftDice(model_version_id, schema[diff.structure], draft.id, diff.dice))
    registry.store_approval_dice(db, scan, final, rows)
    return rows


def score_approval_safely(db: Session, blobs: BlobStore, scan: Scan, version_id: int | None) -> None:
    """`score_approval` in a savepoint: a failure to score never blocks the approval (the rows are derived data)."""
    if version_id is None:
        return
    try:
        with db.begin_nested():
            score_approval(db, blobs, scan, labels.get_version(db, version_id))
    except (DomainError, ValueError, OSError):
        pass
