"""Model rounds: every model of the project with its training rounds (AI-vs-final Dice, held-out means) and its
versions' AI-vs-final Dice recorded at each approval (so the curve fills as scans are approved, not only when a
model retrains)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.dashboard.service.results import ModelRounds, ProjectModelRounds, RoundDice, VersionDice
from backend.models import ApprovalDice, Model, ModelVersion, Project, Structure, TrainingRound


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


def _approval_dice(db: Session, project: Project) -> dict[int, list[VersionDice]]:
    """Per model: its versions' mean AI-vs-final Dice per structure over the approved scans they pre-annotated."""
    rows = db.execute(
        select(
            ModelVersion.model_id,
            ModelVersion.id,
            ModelVersion.number,
            Structure.name,
            func.avg(ApprovalDice.dice),
        )
        .join(ModelVersion, ModelVersion.id == ApprovalDice.model_version_id)
        .join(Structure, Structure.id == ApprovalDice.structure_id)
        .where(ApprovalDice.project_id == project.id)
        .group_by(ModelVersion.model_id, ModelVersion.id, ModelVersion.number, Structure.name)
    ).all()
    scans = dict(
        db.execute(
            select(ApprovalDice.model_version_id, func.count(func.distinct(ApprovalDice.scan_id)))
            .where(ApprovalDice.project_id == project.id)
            .group_by(ApprovalDice.model_version_id)
        ).all()
    )
    per_version: dict[tuple[int, int, int], dict[str, float]] = defaultdict(dict)
    for model_id, version_id, number, name, mean in rows:
        per_version[(int(model_id), int(version_id), int(number))][str(name)] = float(mean)
    out: dict[int, list[VersionDice]] = defaultdict(list)
    for (model_id, version_id, number), dice in sorted(per_version.items(), key=lambda item: item[0][2]):
        out[model_id].append(
            VersionDice(
                model_version_id=version_id,
                number=number,
                scans=int(scans.get(version_id, 0)),
                ai_vs_final_dice=dict(sorted(dice.items())),
                ai_vs_final_mean=sum(dice.values()) / len(dice) if dice else None,
            )
        )
    return out


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
    versions = _approval_dice(db, project)
    out = [
        ModelRounds(
            model_id=model.id,
            name=model.name,
            architecture=model.architecture,
            rounds=[_round(r) for r in rounds_by_model.get(model.id, [])],
            versions=versions.get(model.id, []),
        )
        for model in models
    ]
    return ProjectModelRounds(project_id=project.id, models=out)
