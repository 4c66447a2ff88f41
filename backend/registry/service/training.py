"""Training data rules and training rounds: only approved label versions train a model; each round is recorded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.errors import InvalidInput
from backend.models import Model, ScanTask, TrainingRound


def approved_version_ids(db: Session, project_id: int) -> list[int]:
    """The approved label version of every approved scan of a project (``ScanTask.approved_version_id``)."""
    rows = db.scalars(
        select(ScanTask.approved_version_id)
        .where(ScanTask.project_id == project_id, ScanTask.approved_version_id.is_not(None))
        .order_by(ScanTask.scan_id)
    )
    return [int(v) for v in rows if v is not None]


def check_training_versions(db: Session, project_id: int, label_version_ids: Sequence[int] | None) -> list[int]:
    """The label versions a training may use: the given ones, each the approved version of its scan, or (None)
    every approved version of the project.

    An empty selection is an error, not "all" (422); so is any version that is not its scan's approved version
    (a draft, a model's own output, a superseded or reopened approval): the message names them.
    """
    approved = approved_version_ids(db, project_id)
    if label_version_ids is None:
        if not approved:
            raise InvalidInput("no approved label versions in this project to train on; approve scans in review first")
        return approved
    ids = list(dict.fromkeys(int(v) for v in label_version_ids))
    if not ids:
        raise InvalidInput(
            "the selection of label versions is empty; name the approved versions to train on, or leave the "
            "selection out to train on every approved version"
        )
    allowed = set(approved)
    refused = [v for v in ids if v not in allowed]
    if refused:
        shown = ", ".join(str(v) for v in refused[:50]) + (" …" if len(refused) > 50 else "")
        raise InvalidInput(
            f"label version{'s' if len(refused) > 1 else ''} {shown} {'are' if len(refused) > 1 else 'is'} not "
            "approved: training takes only the approved version of each scan (approve it in review first, or leave "
            "the selection out to train on every approved version)",
            not_approved=refused[:1000],
        )
    return ids


def record_training_round(db: Session, **fields: Any) -> TrainingRound:
    """Store one retraining round (the learning curve a lead watches)."""
    round_ = TrainingRound(**fields)
    db.add(round_)
    db.flush()
    return round_


def training_rounds(db: Session, model: Model) -> list[TrainingRound]:
    """A model's training rounds, oldest first."""
    return list(db.scalars(select(TrainingRound).where(TrainingRound.model_id == model.id).order_by(TrainingRound.id)))
