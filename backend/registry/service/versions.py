"""Model versions: weights stored blob first, their check status, and which version a model has promoted.

Weights from outside (an upload) are stored 'pending' and checked by a worker before they can be promoted or used
(see `backend.flows.registry`); weights this platform produced (its training jobs, the bundled files) and weightless
versions are 'valid' when they are stored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core import decode_limits
from backend.core.blobstore import BlobStore
from backend.core.db import get_or_404
from backend.core.errors import Conflict, InvalidInput
from backend.imaging import bounded
from backend.models import Model, ModelVersion
from backend.registry.service.catalogue import architecture_traits

WEIGHTS_STATUSES = ("pending", "valid", "invalid")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format (its legacy pickle format holds nothing compressed)


def get_model_version(db: Session, version_id: int) -> ModelVersion:
    """A model version by id."""
    return get_or_404(db, ModelVersion, version_id, "model version")


def list_versions(db: Session, model: Model) -> list[ModelVersion]:
    """A model's weight versions, oldest first."""
    return list(db.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id).order_by(ModelVersion.number)))


def promoted_version(db: Session, model: Model) -> ModelVersion | None:
    """The version used for pre-annotation, if any."""
    return db.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.is_promoted))


def add_version(
    db: Session,
    blobs: BlobStore,
    model: Model,
    *,
    weights: bytes | None,
    provenance: dict[str, Any] | None = None,
    validation: dict[str, Any] | None = None,
    weights_status: str = "valid",
    actor_user_id: int | None = None,
) -> ModelVersion:
    """Store weights (blob first) and register them as the model's next version.

    ``weights_status`` 'valid' is for weights this platform produced or ships; an upload passes 'pending' and has
    a worker check them (`flows.registry.upload_version`). Weightless versions are always 'valid'.
    """
    if weights_status not in WEIGHTS_STATUSES:
        raise InvalidInput(f"weights status must be one of {list(WEIGHTS_STATUSES)}")
    if architecture_traits(model.architecture).needs_weights and not weights:
        raise InvalidInput(f"model {model.name!r} ({model.architecture}) needs a weights file")
    if weights and weights.startswith(_ZIP_MAGIC):
        # The API never unpacks weights (it has no torch), but a worker will: refuse a zip bomb now, from the
        # sizes its central directory declares (torch's loader allocates exactly those).
        bounded.check_zip_declared(weights, "weights", decode_limits.current().max_decoded_bytes)
    digest = blobs.put_bytes(weights) if weights else None
    number = (db.scalar(select(func.max(ModelVersion.number)).where(ModelVersion.model_id == model.id)) or 0) + 1
    version = ModelVersion(
        model_id=model.id,
        number=number,
        weights_digest=digest,
        weights_bytes=len(weights) if weights else 0,
        provenance=provenance or {},
        validation=validation or {},
        weights_status=weights_status if weights else "valid",
        weights_check={},
    )
    db.add(version)
    db.flush()
    audit.record(
        db,
        actor_user_id=actor_user_id,
        action="model_version.create",
        entity_type="model_version",
        entity_id=version.id,
        project_id=model.project_id,
        details={"model": model.name, "number": number, "weights_sha256": digest, "status": version.weights_status},
    )
    return version


def check_usable(version: ModelVersion) -> None:
    """Refuse a version whose weights were refused (422) or are still being checked (409)."""
    if version.weights_status == "invalid":
        reason = str((version.weights_check or {}).get("reason") or "they do not load into the architecture")
        raise InvalidInput(
            f"version {version.number}'s weights were refused: {reason}",
            model_version_id=version.id,
            weights_status="invalid",
        )
    if version.weights_status == "pending":
        job_id = (version.weights_check or {}).get("job_id")
        raise Conflict(
            f"version {version.number}'s weights are still being checked (job {job_id}): a worker loads them into "
            "the network and runs one forward pass first; try again once it has",
            model_version_id=version.id,
            weights_status="pending",
            job_id=job_id,
        )


def record_weights_check(
    db: Session, version: ModelVersion, *, valid: bool, reason: str, job_id: int | None, seconds: float
) -> ModelVersion:
    """Store a worker's verdict on uploaded weights ('valid', or 'invalid' with the reason)."""
    version.weights_status = "valid" if valid else "invalid"
    version.weights_check = {
        **dict(version.weights_check or {}),
        "job_id": job_id,
        "reason": reason[:2000],
        "checked_at": datetime.now(UTC).isoformat(),
        "seconds": round(seconds, 3),
    }
    db.flush()
    model = db.get(Model, version.model_id)
    audit.record(
        db,
        actor_user_id=None,
        action="model_version.weights_check",
        entity_type="model_version",
        entity_id=version.id,
        project_id=model.project_id if model else None,
        details={"status": version.weights_status, "reason": reason[:500], "job_id": job_id},
    )
    return version
