"""Models: registration (architecture, structures, preprocessing, sliding window), promotion policy, lookups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core import inference_rules
from backend.core.config import get_settings
from backend.core.db import get_or_404
from backend.core.errors import Conflict, InvalidInput, NotFound
from backend.models import Model
from backend.projects import service as projects

DEFAULT_PREPROCESSING = {"orientation": "RAS", "target_spacing": [1.5, 1.5, 1.5], "hu_window": [-175.0, 250.0]}
DEFAULT_INFERENCE = inference_rules.DEFAULT_INFERENCE
PROMOTION_POLICIES = ("manual", "auto")


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
    it passes the promotion gate on the shared held-out set (so N is required).
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
