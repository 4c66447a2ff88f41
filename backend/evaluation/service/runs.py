"""Evaluation runs: validating a request, planning its (ground truth, prediction) pairs, and reading runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.db import get_or_404
from backend.core.errors import InvalidInput, NotFound
from backend.evaluation import detection, metrics
from backend.evaluation import settings as evaluation_settings
from backend.jobs import service as jobs
from backend.models import (
    EvaluationRun,
    Job,
    LabelVersion,
    Model,
    ModelVersion,
    Prediction,
    Project,
    Scan,
    ScanTask,
    Structure,
    User,
)
from backend.projects import service as projects

MAX_PAIRS = 50_000
FINAL = ("succeeded", "failed")


@dataclass(frozen=True)
class EvaluationRequest:
    """What to evaluate: a model version (or a model's promoted version) or explicit versions, on a split."""

    name: str = ""
    model_version_id: int | None = None
    model_name: str | None = None
    version_ids: Sequence[int] | None = None
    split: str = "test"
    structures: Sequence[str] | None = None
    nsd_tolerance_mm: float | Mapping[str, float] | None = None
    detection: Mapping[str, Any] | None = None
    # "deepmind" | "lorensen" | "monai"; None = the project's setting, else "deepmind".
    metric_definition: str | None = None


def _tolerances(value: float | Mapping[str, float] | None, schema: Sequence[Structure]) -> float | dict[str, float]:
    """Validate the NSD tolerance: one number > 0, or {structure or 'default': number > 0}."""
    if value is None:
        return metrics.DEFAULT_NSD_TOLERANCE_MM
    if isinstance(value, Mapping):
        out: dict[str, float] = {}
        for key, mm in value.items():
            name = key if key == "default" else projects.find_structure(schema, key).name
            out[name] = _positive_mm(mm, key)
        return out
    return _positive_mm(value, "nsd_tolerance_mm")


def _positive_mm(value: Any, what: str) -> float:
    try:
        mm = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"NSD tolerance of {what!r} must be a number of mm") from None
    if not (np.isfinite(mm) and mm > 0):
        raise InvalidInput(f"NSD tolerance of {what!r} must be > 0 mm, got {value}")
    return mm


def _detection_config(data: Mapping[str, Any] | None, default_min_volume_mm3: float) -> detection.DetectionConfig:
    """The request's detection settings; a missing (or null) min_volume_mm3 takes the project's default."""
    values = dict(data or {})
    if values.get("min_volume_mm3") is None:
        values["min_volume_mm3"] = default_min_volume_mm3
    try:
        return detection.DetectionConfig.from_dict(values)
    except ValueError as exc:
        raise InvalidInput(f"detection: {exc}") from None


def _ground_truth(db: Session, project: Project, split: str) -> dict[int, int]:
    """scan id -> approved version id for the scans of a split that have one."""
    query = (
        select(Scan.id, ScanTask.approved_version_id)
        .join(ScanTask, ScanTask.scan_id == Scan.id)
        .where(Scan.project_id == project.id, ScanTask.approved_version_id.is_not(None))
    )
    if split != "all":
        query = query.where(Scan.split == split)
    return {int(scan_id): int(version_id) for scan_id, version_id in db.execute(query) if version_id is not None}


def _check_split(db: Session, project: Project, split: str) -> None:
    if not split or len(split) > 16:
        raise InvalidInput("split must be a split name such as 'test', or 'all'")
    if split == "all":
        return
    if db.scalar(select(func.count(Scan.id)).where(Scan.project_id == project.id, Scan.split == split)) == 0:
        known = sorted(
            str(s) for s in db.scalars(select(Scan.split).where(Scan.project_id == project.id).distinct()) if s
        )
        raise InvalidInput(f"no scan of this project is in split {split!r}", known_splits=[*known, "all"])


def _model_version(db: Session, project: Project, request: EvaluationRequest) -> tuple[Model, ModelVersion]:
    return jobs.resolve_model_version(db, project.id, request.model_version_id, request.model_name)


def _pairs_from_model(
    db: Session, version: ModelVersion, truth: Mapping[int, int], split: str
) -> tuple[list[dict[str, Any]], list[int]]:
    """The newest prediction of the model version for every scan with ground truth; scans it never predicted."""
    newest: dict[int, Prediction] = {}
    for prediction in db.scalars(
        select(Prediction).where(Prediction.model_version_id == version.id).order_by(Prediction.id)
    ):
        if prediction.scan_id in truth:
            newest[prediction.scan_id] = prediction
    if not newest:
        raise InvalidInput(
            f"model version {version.id} has no predictions on the approved scans of split {split!r}; "
            "pre-annotate them with it first",
            model_version_id=version.id,
        )
    pairs = [
        {
            "scan_id": scan_id,
            "gt_version_id": truth[scan_id],
            "pred_version_id": prediction.label_version_id,
            "prediction_id": prediction.id,
        }
        for scan_id, prediction in sorted(newest.items())
    ]
    return pairs, sorted(set(truth) - set(newest))


def _pairs_from_versions(
    db: Session, project: Project, version_ids: Sequence[int], truth: Mapping[int, int], split: str
) -> list[dict[str, Any]]:
    """One explicit version per scan, each scan with approved ground truth in the split."""
    ids = list(dict.fromkeys(version_ids))
    if not ids:
        raise InvalidInput("version_ids is empty")
    pairs, seen, without_truth = [], set(), []
    for version_id in ids:
        version = db.get(LabelVersion, version_id)
        scan = db.get(Scan, version.scan_id) if version is not None else None
        if version is None or scan is None or scan.project_id != project.id:
            raise NotFound(f"label version {version_id} not found in this project")
        if scan.id in seen:
            raise InvalidInput(f"two versions of scan {scan.case_id} given; evaluate one version per scan")
        seen.add(scan.id)
        if scan.id not in truth:
            without_truth.append(scan.case_id)
            continue
        pairs.append({"scan_id": scan.id, "gt_version_id": truth[scan.id], "pred_version_id": version.id})
    if without_truth:
        raise InvalidInput(
            f"{len(without_truth)} of the given versions belong to scans without an approved version in split "
            f"{split!r}: {without_truth[:10]}",
            cases=without_truth[:100],
        )
    return pairs


def create_run(db: Session, project: Project, actor: User | None, request: EvaluationRequest) -> EvaluationRun:
    """Validate a request, plan the (ground truth, prediction) pairs and record a run (no job; see launch)."""
    schema = projects.structures_of(db, project.id)
    by_model = request.model_version_id is not None or bool(request.model_name)
    if by_model == (request.version_ids is not None):
        raise InvalidInput("give either a model version (model_version_id or model) or version_ids, not both")
    split = request.split or "test"
    _check_split(db, project, split)
    truth = _ground_truth(db, project, split)
    if not truth:
        raise InvalidInput(
            f"no scan of split {split!r} has an approved version (ground truth = the approved version)",
            split=split,
        )
    model: Model | None = None
    version: ModelVersion | None = None
    unpredicted: list[int] = []
    if by_model:
        model, version = _model_version(db, project, request)
        pairs, unpredicted = _pairs_from_model(db, version, truth, split)
    else:
        pairs = _pairs_from_versions(db, project, request.version_ids or [], truth, split)
    if len(pairs) > MAX_PAIRS:
        raise InvalidInput(f"{len(pairs)} cases in one evaluation; the limit is {MAX_PAIRS}")
    if request.structures:
        names = list(dict.fromkeys(projects.find_structure(schema, s).name for s in request.structures))
    elif model is not None:
        names = [projects.find_structure(schema, s).name for s in model.structures]
    else:
        names = [s.name for s in schema]
    # The request's values, else the project's settings {"evaluation": {...}}, else the documented defaults.
    defaults = evaluation_settings.project_defaults(project.settings)
    configured = defaults["nsd_tolerance_mm"]
    tolerance = _tolerances(request.nsd_tolerance_mm if request.nsd_tolerance_mm is not None else configured, schema)
    definition = evaluation_settings.definition_name(
        request.metric_definition or defaults["metric_definition"], "metric_definition"
    )
    detect = _detection_config(request.detection, defaults["detection_min_volume_mm3"])
    projects.find_structure(schema, detect.lesion_structure)
    case_ids = dict(db.execute(select(Scan.id, Scan.case_id).where(Scan.id.in_(unpredicted))).all())
    run = EvaluationRun(
        project_id=project.id,
        name=(request.name or _default_name(model, version, split))[:200],
        status="queued",
        model_version_id=version.id if version else None,
        config={
            "split": split,
            "structures": names,
            "nsd_tolerance_mm": tolerance,
            "metric_definition": definition,
            "nsd_definition": metrics.describe_definition(definition),
            "empty_policy": metrics.EMPTY_POLICY,
            "detection": detect.describe(),
            "source": "model_version" if version else "versions",
            "model": {"id": model.id, "name": model.name, "version": version.number} if model and version else None,
            "pairs": pairs,
            "unpredicted_cases": [case_ids.get(i, str(i)) for i in unpredicted][:1000],
        },
        created_by=actor.id if actor else None,
    )
    db.add(run)
    db.flush()
    audit.record(
        db,
        actor_user_id=actor.id if actor else None,
        action="evaluation.create",
        entity_type="evaluation_run",
        entity_id=run.id,
        project_id=project.id,
        details={
            "split": split,
            "cases": len(pairs),
            "structures": names,
            "model_version_id": run.model_version_id,
            "metric_definition": definition,
        },
    )
    return run


def _default_name(model: Model | None, version: ModelVersion | None, split: str) -> str:
    if model is not None and version is not None:
        return f"{model.name} v{version.number} on {split}"
    return f"label versions on {split}"


def launch(db: Session, project: Project, actor: User, request: EvaluationRequest) -> tuple[EvaluationRun, Job]:
    """Create a run and its queued `cpu` job (the outbox sends the job once the caller commits)."""
    run = create_run(db, project, actor, request)
    job = jobs.create_job(
        db,
        project_id=project.id,
        kind="evaluate",
        created_by=actor.id,
        model_version_id=run.model_version_id,
        params={"evaluation_run_id": run.id, "cases": len(run.config["pairs"])},
    )
    run.job_id = job.id
    db.flush()
    return run, job


def run_definition(run: EvaluationRun) -> str:
    """The metric definition a run used (runs made before the choice existed used the closed Lorensen table)."""
    return str(run.config.get("metric_definition") or "lorensen")


def get_run(db: Session, run_id: int) -> EvaluationRun:
    """An evaluation run by id."""
    return get_or_404(db, EvaluationRun, run_id, "evaluation")


def run_for_job(db: Session, job_id: int) -> EvaluationRun:
    """The run an evaluation job executes."""
    run = db.scalar(select(EvaluationRun).where(EvaluationRun.job_id == job_id))
    if run is None:
        raise NotFound(f"job {job_id} has no evaluation run")
    return run


@dataclass(frozen=True)
class RunState:
    """A run's status as readers see it, with the error and finish time that go with it."""

    status: str
    error: str | None
    finished_at: datetime | None


def run_state(db: Session, run: EvaluationRun) -> RunState:
    """A run whose job failed or was cancelled reads as failed; derived on read, never written by a read (a GET
    that wrote would fight the worker for SQLite's write lock)."""
    if run.status in FINAL or run.job_id is None:
        return RunState(run.status, run.error, run.finished_at)
    job = db.get(Job, run.job_id)
    if job is not None and job.status in ("failed", "cancelled"):
        return RunState("failed", job.error or f"job {job.status}", job.finished_at)
    if job is not None and job.status == "running" and run.status == "queued":
        return RunState("running", run.error, run.finished_at)
    return RunState(run.status, run.error, run.finished_at)


def list_runs(db: Session, project_id: int, *, offset: int = 0, limit: int = 100) -> tuple[list[EvaluationRun], int]:
    """A project's evaluation runs, newest first, with the total."""
    query = select(EvaluationRun).where(EvaluationRun.project_id == project_id)
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    runs = list(db.scalars(query.order_by(EvaluationRun.id.desc()).offset(offset).limit(limit)))
    return runs, int(total)
