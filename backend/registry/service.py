"""Model registry, predictions, attention maps with priorities, and training rounds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core import decode_limits, inference_rules
from backend.core.blobstore import BlobStore
from backend.core.config import get_settings
from backend.core.db import get_or_404
from backend.core.errors import Conflict, InvalidInput, NotFound
from backend.imaging import bounded, chunks, softmaps
from backend.models import (
    AttentionMap,
    LabelVersion,
    Model,
    ModelVersion,
    Prediction,
    Scan,
    Structure,
    TrainingRound,
)
from backend.projects import service as projects
from backend.workflow import service as workflow

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
DEFAULT_PREPROCESSING = {"orientation": "RAS", "target_spacing": [1.5, 1.5, 1.5], "hu_window": [-175.0, 250.0]}
DEFAULT_INFERENCE = inference_rules.DEFAULT_INFERENCE


PROMOTION_POLICIES = ("manual", "auto")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format (its legacy pickle format holds nothing compressed)


def validate_inference(settings: dict[str, Any]) -> dict[str, Any]:
    """Check a model's sliding-window settings at registration, so a typo fails there and not in every job."""
    try:
        return inference_rules.check_inference(settings)
    except inference_rules.InferenceSettingsError as exc:
        raise InvalidInput(str(exc)) from exc


def architecture_traits(architecture: str) -> inference_rules.ArchitectureTraits:
    """An architecture's traits (trainable? needs weights?) from the shared catalogue or the configured extras."""
    try:
        return inference_rules.traits_of(architecture, get_settings().extra_architectures)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


def is_trainable(architecture: str) -> bool:
    """Whether models of this architecture can be fine-tuned (False for an unknown one)."""
    try:
        return architecture_traits(architecture).trainable
    except InvalidInput:
        return False


def _check_retrainable(architecture: str, promotion: dict[str, Any]) -> None:
    """The auto policy retrains: refuse it for an architecture without trainable weights."""
    if promotion["policy"] == "auto" and not is_trainable(architecture):
        raise InvalidInput(f"a {architecture} model has no weights to retrain; its promotion policy stays manual")


def validate_promotion(value: Any) -> dict[str, Any]:
    """A model's promotion settings: ``{"policy": "manual"|"auto", "retrain_every_approvals": N ≥ 1 | None}``.

    'manual': a lead promotes; 'auto': retrain after every N newly approved scans and promote the new version when
    it beats the promoted one on the shared held-out set (so N is required).
    """
    if not isinstance(value, dict):
        raise InvalidInput('promotion must be an object like {"policy": "auto", "retrain_every_approvals": 10}')
    unknown = sorted(set(value) - {"policy", "retrain_every_approvals"})
    if unknown:
        raise InvalidInput(f"unknown promotion setting(s) {unknown}; use 'policy' and 'retrain_every_approvals'")
    policy = value.get("policy", "manual")
    if policy not in PROMOTION_POLICIES:
        raise InvalidInput(f"promotion policy must be 'manual' or 'auto', got {policy!r}")
    every = value.get("retrain_every_approvals")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise InvalidInput(f"retrain_every_approvals must be a whole number ≥ 1, got {every!r}")
    if policy == "auto" and every is None:
        raise InvalidInput("the auto promotion policy needs retrain_every_approvals (retrain after every N approvals)")
    return {"policy": policy, "retrain_every_approvals": every}


def _promotion_settings(
    config: dict[str, Any], promotion_policy: str, retrain_every_approvals: int | None
) -> dict[str, Any]:
    """The promotion settings of a new model: ``config["promotion"]`` or the flat fields (they must agree)."""
    flat = validate_promotion({"policy": promotion_policy, "retrain_every_approvals": retrain_every_approvals})
    if "promotion" not in config:
        return flat
    nested = validate_promotion(config["promotion"])
    if flat != {"policy": "manual", "retrain_every_approvals": None} and flat != nested:
        raise InvalidInput("config.promotion and promotion_policy/retrain_every_approvals disagree; give one of them")
    return nested


def create_model(
    db: Session,
    project_id: int,
    *,
    name: str,
    architecture: str,
    structures: Sequence[str],
    config: dict[str, Any] | None = None,
    preprocessing: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
    promotion_policy: str = "manual",
    retrain_every_approvals: int | None = None,
    actor_user_id: int | None = None,
) -> Model:
    """Register a model; its structures must all be in the project's schema."""
    architecture_traits(architecture)  # an unknown architecture is refused before anything else
    promotion = _promotion_settings(dict(config or {}), promotion_policy, retrain_every_approvals)
    _check_retrainable(architecture, promotion)
    if not structures:
        raise InvalidInput("a model must predict at least one structure")
    schema = projects.structures_of(db, project_id)
    names = [projects.find_structure(schema, name).name for name in structures]
    if len(set(names)) != len(names):
        raise InvalidInput("a structure is listed twice")
    if db.scalar(select(Model.id).where(Model.project_id == project_id, Model.name == name)) is not None:
        raise Conflict(f"a model named {name!r} already exists in this project")
    overlap = validate_inference(inference or {})
    model = Model(
        project_id=project_id,
        name=name,
        architecture=architecture,
        structures=names,
        config={**(config or {}), "promotion": promotion},
        preprocessing={**DEFAULT_PREPROCESSING, **(preprocessing or {})},
        inference={**DEFAULT_INFERENCE, **overlap},
        promotion_policy=promotion["policy"],
        retrain_every_approvals=promotion["retrain_every_approvals"],
    )
    db.add(model)
    db.flush()
    audit.record(
        db,
        actor_user_id=actor_user_id,
        action="model.create",
        entity_type="model",
        entity_id=model.id,
        project_id=project_id,
        details={"name": name, "architecture": architecture, "structures": names},
    )
    return model


def update_promotion(db: Session, model: Model, value: Any, *, actor_user_id: int | None = None) -> Model:
    """Change a model's promotion policy (``config["promotion"]`` and its mirrored columns)."""
    promotion = validate_promotion(value)
    _check_retrainable(model.architecture, promotion)
    before = {"policy": model.promotion_policy, "retrain_every_approvals": model.retrain_every_approvals}
    model.config = {**dict(model.config), "promotion": promotion}
    model.promotion_policy = promotion["policy"]
    model.retrain_every_approvals = promotion["retrain_every_approvals"]
    db.flush()
    audit.record(
        db,
        actor_user_id=actor_user_id,
        action="model.update",
        entity_type="model",
        entity_id=model.id,
        project_id=model.project_id,
        details={"promotion": promotion, "before": before},
    )
    return model


def get_model(db: Session, model_id: int) -> Model:
    """A model by id."""
    return get_or_404(db, Model, model_id, "model")


def get_model_by_name(db: Session, project_id: int, name: str) -> Model:
    """A model of a project by name."""
    model = db.scalar(select(Model).where(Model.project_id == project_id, Model.name == name))
    if model is None:
        raise NotFound(f"no model named {name!r} in this project")
    return model


def list_models(db: Session, project_id: int) -> list[Model]:
    """A project's models by name."""
    return list(db.scalars(select(Model).where(Model.project_id == project_id).order_by(Model.name)))


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
    actor_user_id: int | None = None,
) -> ModelVersion:
    """Store weights (blob first) and register them as the model's next version."""
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
        details={"model": model.name, "number": number, "weights_sha256": digest},
    )
    return version


def _heldout_mean(metrics: dict[str, Any]) -> float | None:
    value = metrics.get("mean_dice")
    return float(value) if value is not None else None


def promotion_check(db: Session, version: ModelVersion) -> tuple[bool, str]:
    """Whether a version may be promoted: it must beat the promoted one on the same held-out set."""
    model = get_model(db, version.model_id)
    current = promoted_version(db, model)
    if current is None:
        return True, "no version of this model is promoted yet"
    if current.id == version.id:
        return False, "this version is already promoted"
    round_ = db.scalar(select(TrainingRound).where(TrainingRound.new_model_version_id == version.id))
    if round_ is None or round_.previous_model_version_id != current.id:
        return False, (
            f"version {version.number} was not evaluated against the promoted version {current.number} "
            "on a shared held-out set; retrain to compare them"
        )
    new, old = _heldout_mean(round_.heldout_new), _heldout_mean(round_.heldout_previous)
    if new is None or old is None:
        return False, "held-out metrics are missing"
    if new <= old:
        return False, f"held-out mean Dice {new:.3f} does not beat the promoted version's {old:.3f}"
    return True, f"held-out mean Dice {new:.3f} beats {old:.3f}"


def promote(db: Session, version: ModelVersion, actor_user_id: int | None, *, checked: bool = True) -> ModelVersion:
    """Make this the model's promoted version (refused unless it beats the current one on held-out data)."""
    if checked:
        allowed, reason = promotion_check(db, version)
        if not allowed:
            raise Conflict(f"promotion refused: {reason}")
    model = get_model(db, version.model_id)
    current = promoted_version(db, model)
    if current is not None:
        current.is_promoted = False
        db.flush()
    version.is_promoted = True
    db.flush()
    audit.record(
        db,
        actor_user_id=actor_user_id,
        action="model_version.promote",
        entity_type="model_version",
        entity_id=version.id,
        project_id=model.project_id,
        details={"model": model.name, "number": version.number, "previous": current.number if current else None},
    )
    return version


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
    promote(db, version, None, checked=False)
    return model


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


@dataclass(frozen=True)
class AttentionInput:
    """One structure's attention result to store."""

    structure: Structure
    mask: np.ndarray
    inconsistency_voxels: int
    uncertainty_voxels: int
    overlap_voxels: int


def store_attention(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    results: Sequence[AttentionInput],
    *,
    job_id: int | None,
    model_version_ids: Sequence[int],
) -> list[AttentionMap]:
    """Replace the scan's attention maps (derived data, recomputed from predictions) and their priorities."""
    stored = []
    for item in results:
        manifest = chunks.build_manifest(item.mask, blobs.put_bytes)
        digest = blobs.put_bytes(manifest.to_bytes())
        voxels = manifest.voxel_count
        row = db.scalar(
            select(AttentionMap).where(AttentionMap.scan_id == scan.id, AttentionMap.structure_id == item.structure.id)
        )
        if row is None:
            row = AttentionMap(project_id=scan.project_id, scan_id=scan.id, structure_id=item.structure.id)
            db.add(row)
        row.job_id = job_id
        row.manifest_digest = digest
        row.attention_voxels = voxels
        row.inconsistency_voxels = item.inconsistency_voxels
        row.uncertainty_voxels = item.uncertainty_voxels
        row.overlap_voxels = item.overlap_voxels
        row.priority = voxels / max(1, scan.slice_count)
        row.model_version_ids = list(model_version_ids)
        stored.append(row)
    db.flush()
    top = db.scalar(select(func.max(AttentionMap.priority)).where(AttentionMap.scan_id == scan.id))
    workflow.update_priority(db, scan.id, float(top or 0.0))
    return stored


def attention_for(db: Session, scan_id: int, structure_id: int) -> AttentionMap:
    """The attention map of one structure of a scan."""
    row = db.scalar(
        select(AttentionMap).where(AttentionMap.scan_id == scan_id, AttentionMap.structure_id == structure_id)
    )
    if row is None:
        raise NotFound("no attention map for this structure; run the attention step on ≥ 2 model predictions")
    return row


def ranked_priorities(
    db: Session, project_id: int, *, offset: int, limit: int, structure_id: int | None = None
) -> tuple[list[tuple[AttentionMap, Scan, Structure]], int]:
    """(scan, structure) pairs by descending priority: where a radiologist's look is worth most."""
    query = (
        select(AttentionMap, Scan, Structure)
        .join(Scan, Scan.id == AttentionMap.scan_id)
        .join(Structure, Structure.id == AttentionMap.structure_id)
        .where(AttentionMap.project_id == project_id, AttentionMap.attention_voxels > 0)
    )
    if structure_id is not None:
        query = query.where(AttentionMap.structure_id == structure_id)
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = db.execute(query.order_by(AttentionMap.priority.desc(), AttentionMap.id).offset(offset).limit(limit))
    return [(a, s, st) for a, s, st in rows.all()], int(total)


def ranked_scans(db: Session, project_id: int, *, offset: int, limit: int) -> list[tuple[int, str, float]]:
    """Scans by total attention (summed over structures, normalised by slice count)."""
    rows = db.execute(
        select(Scan.id, Scan.case_id, func.sum(AttentionMap.priority).label("score"))
        .join(AttentionMap, AttentionMap.scan_id == Scan.id)
        .where(AttentionMap.project_id == project_id)
        .group_by(Scan.id, Scan.case_id)
        .order_by(func.sum(AttentionMap.priority).desc(), Scan.id)
        .offset(offset)
        .limit(limit)
    )
    return [(int(i), str(c), float(s)) for i, c, s in rows.all()]


def record_training_round(db: Session, **fields: Any) -> TrainingRound:
    """Store one retraining round (the learning curve a lead watches)."""
    round_ = TrainingRound(**fields)
    db.add(round_)
    db.flush()
    return round_


def training_rounds(db: Session, model: Model) -> list[TrainingRound]:
    """A model's training rounds, oldest first."""
    return list(db.scalars(select(TrainingRound).where(TrainingRound.model_id == model.id).order_by(TrainingRound.id)))
