"""Promotion: the gate a candidate version must pass, promoting, rolling back, and the decisions that record them.

The gate (`evaluate_gate`) compares a candidate with the promoted version on the held-out scans of the training
round that produced it, under the project's `settings["promotion"]` rules:

- ``min_heldout_scans`` (default 5): fewer held-out scans and nothing is promoted (n = 1 proves nothing);
- ``max_structure_drop`` (default 0.02 Dice): no structure may lose more than this;
- and the mean Dice over the structures must rise (strictly).

A lead may instead roll back to any earlier version of the model (`rollback`, with a reason). Every promotion and
rollback is a `ModelDecision` row: who, from which version to which, why, and the gate with each structure's
old/new Dice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.errors import Conflict, InvalidInput
from backend.models import Model, ModelDecision, ModelVersion, Project, TrainingRound
from backend.registry.service.catalogue import architecture_traits, get_model
from backend.registry.service.versions import check_usable, promoted_version

DEFAULT_MIN_HELDOUT_SCANS = 5
DEFAULT_MAX_STRUCTURE_DROP = 0.02
PROMOTION_RULE_KEYS = ("min_heldout_scans", "max_structure_drop")
MAX_REASON = 2000
_EPS = 1e-9


@dataclass(frozen=True)
class PromotionRules:
    """A project's promotion gate: the least held-out scans and the most Dice one structure may lose."""

    min_heldout_scans: int = DEFAULT_MIN_HELDOUT_SCANS
    max_structure_drop: float = DEFAULT_MAX_STRUCTURE_DROP


def validate_promotion_rules(value: Any) -> dict[str, Any]:
    """Check a project's `promotion` settings section: ``{"min_heldout_scans": n ≥ 1, "max_structure_drop": d}``."""
    if not isinstance(value, dict):
        raise InvalidInput(
            'promotion settings must be an object like {"min_heldout_scans": 5, "max_structure_drop": 0.02}'
        )
    unknown = sorted(set(value) - set(PROMOTION_RULE_KEYS))
    if unknown:
        raise InvalidInput(f"unknown promotion settings {unknown}; known: {list(PROMOTION_RULE_KEYS)}")
    out: dict[str, Any] = {}
    if "min_heldout_scans" in value:
        n = value["min_heldout_scans"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000:
            raise InvalidInput(f"promotion.min_heldout_scans must be a whole number of scans ≥ 1, got {n!r}")
        out["min_heldout_scans"] = n
    if "max_structure_drop" in value:
        drop = value["max_structure_drop"]
        if isinstance(drop, bool) or not isinstance(drop, int | float) or not math.isfinite(drop) or not 0 <= drop <= 1:
            raise InvalidInput(f"promotion.max_structure_drop must be a Dice difference in [0, 1], got {drop!r}")
        out["max_structure_drop"] = float(drop)
    return out


def promotion_rules(project: Project) -> PromotionRules:
    """The project's promotion gate (a stored section that no longer validates falls back to the defaults)."""
    raw = (project.settings or {}).get("promotion")
    try:
        section = validate_promotion_rules(raw) if raw is not None else {}
    except InvalidInput:
        section = {}
    return PromotionRules(**section)


def _per_structure(metrics: dict[str, Any]) -> dict[str, float]:
    per = (metrics or {}).get("per_structure") or {}
    return {str(k): float(v) for k, v in per.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _mean(metrics: dict[str, Any], per: dict[str, float]) -> float | None:
    value = (metrics or {}).get("mean_dice")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return sum(per.values()) / len(per) if per else None


def evaluate_gate(
    heldout_new: dict[str, Any],
    heldout_previous: dict[str, Any],
    heldout_scans: int,
    rules: PromotionRules,
    order: Sequence[str] = (),
) -> dict[str, Any]:
    """The promotion gate of a candidate against the promoted version on one held-out set, as stored data (the
    structures in ``order``, the model's, then any other by name).

    ``{"passed", "heldout_scans", "min_heldout_scans", "max_structure_drop", "mean_new", "mean_previous",
    "structures": [{"structure", "previous", "new", "delta", "ok"}], "failures": [reasons]}``.
    """
    new, old = _per_structure(heldout_new), _per_structure(heldout_previous)
    # The reasons, the mean first (the headline), then each regressed structure, then the held-out size.
    failures: list[str] = []
    mean_new, mean_old = _mean(heldout_new, new), _mean(heldout_previous, old)
    if mean_new is None or mean_old is None:
        failures.append("held-out metrics are missing")
    elif mean_new <= mean_old:
        failures.append(f"held-out mean Dice {mean_new:.3f} does not beat the promoted version's {mean_old:.3f}")
    rows: list[dict[str, Any]] = []
    names = {*new, *old}
    for name in [*(n for n in order if n in names), *sorted(names - set(order))]:
        a, b = old.get(name), new.get(name)
        delta = None if a is None or b is None else b - a
        ok = delta is not None and delta >= -rules.max_structure_drop - _EPS
        rows.append({"structure": name, "previous": a, "new": b, "delta": delta, "ok": ok})
        if delta is None:
            failures.append(
                f"{name} has no held-out Dice for {'the candidate' if b is None else 'the promoted version'}"
            )
        elif not ok:
            failures.append(
                f"{name} lost {-delta:.3f} Dice ({a:.3f} → {b:.3f}), more than the {rules.max_structure_drop:g} margin"
            )
    if heldout_scans < rules.min_heldout_scans:
        failures.append(
            f"the held-out set has {heldout_scans} scan{'s' if heldout_scans != 1 else ''}; promotion needs at "
            f"least {rules.min_heldout_scans} (project setting promotion.min_heldout_scans)"
        )
    return {
        "passed": not failures,
        "heldout_scans": heldout_scans,
        "min_heldout_scans": rules.min_heldout_scans,
        "max_structure_drop": rules.max_structure_drop,
        "mean_new": mean_new,
        "mean_previous": mean_old,
        "structures": rows,
        "failures": failures,
    }


def gate_summary(gate: dict[str, Any]) -> str:
    """One line for a lead: the verdict, the means and each structure's previous → new Dice."""
    if not gate:
        return ""

    def _dice(value: Any) -> str:
        return "—" if value is None else f"{float(value):.3f}"

    structures = ", ".join(
        f"{row['structure']} {_dice(row['previous'])}→{_dice(row['new'])}{'' if row['ok'] else ' ✗'}"
        for row in gate.get("structures", [])
    )
    head = (
        f"held-out mean Dice {_dice(gate.get('mean_previous'))}→{_dice(gate.get('mean_new'))} on "
        f"{gate.get('heldout_scans')} scans"
    )
    return f"{head}; {structures}" if structures else head


@dataclass(frozen=True)
class PromotionCheck:
    """Whether a version may be promoted now, why, and the gate that decided (empty when none applied)."""

    allowed: bool
    reason: str
    gate: dict[str, Any] = field(default_factory=dict)
    round_id: int | None = None


def promotion_check(db: Session, version: ModelVersion) -> PromotionCheck:
    """Whether a version may be promoted: checked weights, and the gate against the promoted version passed."""
    model = get_model(db, version.model_id)
    if version.weights_status != "valid":
        state = "were refused" if version.weights_status == "invalid" else "are still being checked"
        return PromotionCheck(False, f"version {version.number}'s weights {state}")
    current = promoted_version(db, model)
    if current is None:
        return PromotionCheck(True, "no version of this model is promoted yet")
    if current.id == version.id:
        return PromotionCheck(False, "this version is already promoted")
    round_ = db.scalar(select(TrainingRound).where(TrainingRound.new_model_version_id == version.id))
    if round_ is None or round_.previous_model_version_id != current.id:
        hint = (
            f"; or roll back to it with a reason (POST /api/model-versions/{version.id}/rollback)"
            if version.number < current.number
            else ""
        )
        return PromotionCheck(
            False,
            f"version {version.number} was not evaluated against the promoted version {current.number} on a shared "
            f"held-out set; retrain to compare them{hint}",
        )
    project = db.get(Project, model.project_id)
    assert project is not None
    gate = evaluate_gate(
        round_.heldout_new, round_.heldout_previous, round_.heldout_versions, promotion_rules(project), model.structures
    )
    summary = gate_summary(gate)
    if not gate["passed"]:
        return PromotionCheck(False, "; ".join(gate["failures"]) + f" ({summary})", gate, round_.id)
    return PromotionCheck(True, f"passed the promotion gate: {summary}", gate, round_.id)


def _switch(
    db: Session,
    model: Model,
    version: ModelVersion,
    *,
    kind: str,
    reason: str,
    actor_user_id: int | None,
    gate: dict[str, Any],
    round_id: int | None,
) -> ModelDecision:
    """Make ``version`` the promoted one and record the decision and an audit event."""
    current = promoted_version(db, model)
    if current is not None:
        current.is_promoted = False
        db.flush()
    version.is_promoted = True
    db.flush()
    decision = ModelDecision(
        model_id=model.id,
        kind=kind,
        from_version_id=current.id if current else None,
        to_version_id=version.id,
        training_round_id=round_id,
        actor_user_id=actor_user_id,
        reason=reason[:MAX_REASON],
        gate=gate,
    )
    db.add(decision)
    db.flush()
    audit.record(
        db,
        actor_user_id=actor_user_id,
        action=f"model_version.{kind}",
        entity_type="model_version",
        entity_id=version.id,
        project_id=model.project_id,
        details={
            "model": model.name,
            "number": version.number,
            "previous": current.number if current else None,
            "reason": reason[:500],
            "decision_id": decision.id,
        },
    )
    return decision


def promote(
    db: Session, version: ModelVersion, actor_user_id: int | None, *, checked: bool = True, reason: str = ""
) -> ModelVersion:
    """Make this the model's promoted version: refused unless its weights were checked and (``checked``) it passed
    the promotion gate against the promoted one; platform set-up (bundled or classical models) passes
    ``checked=False``."""
    check_usable(version)
    model = get_model(db, version.model_id)
    check = promotion_check(db, version) if checked else PromotionCheck(True, reason or "registered and promoted")
    if not check.allowed:
        raise Conflict(f"promotion refused: {check.reason}", **({"gate": check.gate} if check.gate else {}))
    _switch(
        db,
        model,
        version,
        kind="promote",
        reason=reason.strip() or check.reason,
        actor_user_id=actor_user_id,
        gate=check.gate,
        round_id=check.round_id,
    )
    return version


def rollback(db: Session, version: ModelVersion, *, reason: str, actor_user_id: int | None) -> ModelVersion:
    """Make an earlier version the promoted one again (a lead's decision, recorded with its reason)."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("a rollback needs a reason (it is recorded with the decision)")
    if len(reason) > MAX_REASON:
        raise InvalidInput(f"the reason is {len(reason)} characters; at most {MAX_REASON}")
    model = get_model(db, version.model_id)
    current = promoted_version(db, model)
    if current is None:
        raise InvalidInput(f"no version of model {model.name!r} is promoted: promote one instead of rolling back")
    if current.id == version.id:
        raise Conflict(f"version {version.number} is already the promoted version of {model.name!r}")
    if version.number > current.number:
        raise InvalidInput(
            f"version {version.number} is newer than the promoted version {current.number}: a rollback goes back to "
            "an earlier version; a newer one is promoted after a training round compared them on held-out scans"
        )
    check_usable(version)
    if architecture_traits(model.architecture).needs_weights and not version.weights_digest:
        raise InvalidInput(f"version {version.number} has no weights to roll back to")
    _switch(db, model, version, kind="rollback", reason=reason, actor_user_id=actor_user_id, gate={}, round_id=None)
    return version


def decisions(db: Session, model: Model) -> list[ModelDecision]:
    """A model's promotion and rollback decisions, oldest first."""
    return list(db.scalars(select(ModelDecision).where(ModelDecision.model_id == model.id).order_by(ModelDecision.id)))
