"""Model outputs: predictions with their soft maps, which structures a model's label version really predicted, and
the AI-vs-final Dice recorded when a scan is approved."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.errors import InvalidInput, NotFound
from backend.imaging import softmaps
from backend.models import ApprovalDice, LabelVersion, Model, ModelVersion, Prediction, Scan, Structure


def record_prediction(
    db: Session, *, job_id: int, scan: Scan, model_version: ModelVersion, label_version: LabelVersion, maps: dict
) -> Prediction:
    """Remember which label version and probability/entropy maps a job produced."""
    prediction = Prediction(
        job_id=job_id,
        scan_id=scan.id,
        model_version_id=model_version.id,
        label_version_id=label_version.id,
        maps=maps,
    )
    db.add(prediction)
    db.flush()
    return prediction


def prediction_for_job(db: Session, job_id: int) -> Prediction | None:
    """The prediction a job already wrote (a rerun finds it instead of writing a second one)."""
    return db.scalar(select(Prediction).where(Prediction.job_id == job_id))


def latest_predictions(db: Session, scan_id: int, model_version_ids: Sequence[int] | None = None) -> list[Prediction]:
    """The newest prediction of each model version for a scan."""
    query = select(Prediction).where(Prediction.scan_id == scan_id)
    if model_version_ids:
        query = query.where(Prediction.model_version_id.in_(model_version_ids))
    newest: dict[int, Prediction] = {}
    for prediction in db.scalars(query.order_by(Prediction.id)):
        newest[prediction.model_version_id] = prediction
    return list(newest.values())


def prediction_map(
    db: Session, blobs: BlobStore, scan_id: int, prediction_id: int, map_kind: str, structure: str
) -> tuple[bytes, str]:
    """A prediction's probability (p*255) or entropy map of one structure as .nii.gz on the scan grid, and an ETag.

    Maps are stored cropped to their non-zero box, entropy derived on read; rows written before that kept both
    whole-grid maps, which are served as stored.
    """
    if map_kind not in softmaps.MAP_KINDS:
        raise InvalidInput("map kind must be 'probability' or 'entropy'")
    prediction = next((p for p in latest_predictions(db, scan_id) if p.id == prediction_id), None)
    if prediction is None or structure not in prediction.maps:
        raise NotFound(f"no {map_kind} map of {structure!r} in prediction {prediction_id}")
    entry = dict(prediction.maps[structure])
    if entry.get("format") != softmaps.FORMAT:
        digest = str(entry[map_kind])
        return blobs.get_bytes(digest), digest
    digest = str(entry["probability"])
    return softmaps.full_grid_nifti_gz(blobs.get_bytes(digest), entry, map_kind), f"{digest}-{map_kind}"


def predicted_structures(db: Session, version: LabelVersion) -> list[str] | None:
    """The structures a `model` label version predicted (None for a version of another kind: all of them).

    A model's label version is saved on the scan's head, so it also carries the structures its parent had (copied
    by digest); only those the model predicted measure the model. A pre-annotation job records them with its
    prediction (one soft map per predicted structure); a `model` version a service account uploaded has no
    prediction row, and its model's registered structures are taken instead.
    """
    if version.kind != "model":
        return None
    prediction = db.scalar(
        select(Prediction).where(Prediction.label_version_id == version.id).order_by(Prediction.id.desc()).limit(1)
    )
    if prediction is not None:
        return list(prediction.maps)
    model = db.scalar(
        select(Model)
        .join(ModelVersion, ModelVersion.model_id == Model.id)
        .where(ModelVersion.id == version.author_model_version_id)
    )
    return list(model.structures) if model is not None else []


def model_drafts(db: Session, scan_id: int) -> list[tuple[int, LabelVersion]]:
    """(model version id, its newest `model` label version) for every model version that pre-annotated the scan."""
    newest: dict[int, LabelVersion] = {}
    rows = db.scalars(
        select(LabelVersion)
        .where(
            LabelVersion.scan_id == scan_id,
            LabelVersion.kind == "model",
            LabelVersion.author_model_version_id.is_not(None),
        )
        .order_by(LabelVersion.id)
    )
    for version in rows:
        assert version.author_model_version_id is not None
        newest[version.author_model_version_id] = version
    return sorted(newest.items())


@dataclass(frozen=True)
class DraftDice:
    """The Dice of one structure a model version predicted, its draft against the approved version."""

    model_version_id: int
    structure: Structure
    draft_version_id: int
    dice: float


def store_approval_dice(db: Session, scan: Scan, final: LabelVersion, rows: Sequence[DraftDice]) -> list[ApprovalDice]:
    """Replace the scan's AI-vs-final Dice with those of this approval (one row per model version and structure)."""
    db.execute(delete(ApprovalDice).where(ApprovalDice.scan_id == scan.id))
    stored = [
        ApprovalDice(
            project_id=scan.project_id,
            scan_id=scan.id,
            model_version_id=row.model_version_id,
            structure_id=row.structure.id,
            draft_version_id=row.draft_version_id,
            final_version_id=final.id,
            dice=float(row.dice),
        )
        for row in rows
    ]
    db.add_all(stored)
    db.flush()
    return stored


def approval_dice(db: Session, scan_id: int) -> list[ApprovalDice]:
    """The AI-vs-final Dice rows of a scan's latest approval."""
    return list(
        db.scalars(
            select(ApprovalDice)
            .where(ApprovalDice.scan_id == scan_id)
            .order_by(ApprovalDice.model_version_id, ApprovalDice.structure_id)
        )
    )
