"""The weightless HU-threshold pre-annotator every project gets at creation."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.models import Model
from backend.projects import service as projects
from backend.registry.service.catalogue import create_model
from backend.registry.service.promotion import promote
from backend.registry.service.versions import add_version

CLASSICAL_MODEL_NAME = "classical-hu"
# What the weightless pre-annotator finds (worker/models/classical.py; a unit test keeps the two equal).
CLASSICAL_STRUCTURES = (
    "aorta",
    "kidney_left",
    "kidney_right",
    "liver",
    "lung_left",
    "lung_right",
    "postcava",
    "spleen",
    "stomach",
)


def ensure_classical_model(
    db: Session, blobs: BlobStore, project_id: int, structures: Sequence[str] | None = None
) -> Model | None:
    """The weightless HU-threshold pre-annotator, registered and promoted (idempotent; None if no structure fits)."""
    if structures is None:
        names = {s.name for s in projects.structures_of(db, project_id)}
        structures = [name for name in CLASSICAL_STRUCTURES if name in names]
    if not structures:
        return None
    existing = db.scalar(select(Model).where(Model.project_id == project_id, Model.name == CLASSICAL_MODEL_NAME))
    if existing is not None:
        return existing
    model = create_model(
        db,
        project_id,
        name=CLASSICAL_MODEL_NAME,
        architecture="classical",
        structures=structures,
        preprocessing={},
        config={"method": "HU thresholds + connected components + position priors"},
    )
    version = add_version(db, blobs, model, weights=None, provenance={"trained": False})
    promote(db, version, None, checked=False, reason="the weightless classical pre-annotator, promoted at registration")
    return model
