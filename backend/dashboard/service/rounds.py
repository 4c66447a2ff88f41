"""Model rounds: every model of the project with its training rounds (AI-vs-final Dice, held-out means)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.dashboard.service.results import ModelRounds, ProjectModelRounds, RoundDice
from backend.models import Model, Project, TrainingRound


def _heldout_mean(metrics: Any) -> float | None:
    """The mean held-out Dice of a training round's metrics dict, when recorded."""
    if not isinstance(metrics, dict):
        return None
    value = metrics.get("mean_dice")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    per = metrics.get("per_structure")
    if isinstance(per, dict):
        values = [float(v) for v in per.values() if isinstance(v, int | float) and not isinstance(v, bool)]
        return sum(values) / len(values) if values else None
    return None


def _round(r: TrainingRound) -> RoundDice:
    dice = {
        str(k): float(v)
        for k, v in (r.ai_vs_final_dice or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return RoundDice(
        round_id=r.id,
        created_at=r.created_at,
        new_model_version_id=r.new_model_version_id,
        previous_model_version_id=r.previous_model_version_id,
        train_versions=r.train_versions,
        heldout_versions=r.heldout_versions,
        scans_revised=r.scans_revised,
        promoted=r.promoted,
        ai_vs_final_dice=dice,
        ai_vs_final_mean=sum(dice.values()) / len(dice) if dice else None,
        heldout_new_mean=_heldout_mean(r.heldout_new),
        heldout_previous_mean=_heldout_mean(r.heldout_previous),
    )


def model_rounds(db: Session, project: Project) -> ProjectModelRounds:
    """Every model of the project with its training rounds: AI-vs-final Dice per structure, held-out means."""
    models = list(db.scalars(select(Model).where(Model.project_id == project.id).order_by(Model.id)))
    rounds_by_model: dict[int, list[TrainingRound]] = defaultdict(list)
    if models:
        for round_ in db.scalars(
            select(TrainingRound)
            .where(TrainingRound.model_id.in_([m.id for m in models]))
            .order_by(TrainingRound.created_at, TrainingRound.id)
        ):
            rounds_by_model[round_.model_id].append(round_)
    out = [
        ModelRounds(
            model_id=model.id,
            name=model.name,
            architecture=model.architecture,
            rounds=[_round(r) for r in rounds_by_model.get(model.id, [])],
        )
        for model in models
    ]
    return ProjectModelRounds(project_id=project.id, models=out)
