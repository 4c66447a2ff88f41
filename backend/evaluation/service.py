"""Evaluation runs: score a model version's (or explicit) label versions against approved ground truth.

Ground truth is `ScanTask.approved_version_id` of each scan of the chosen split ('all' = every scan). A run is
planned here (pairs of ground-truth and predicted versions, stored in `run.config`), executed as a `cpu` job
(`maskloop.evaluate`, worker/pipelines/evaluate.py) or synchronously (`execute_run`, used by the CLI), and its
results replace any earlier results of the same run, so a rerun is idempotent.

Summary conventions: per structure mean and median of DSC, NSD, HD95 and volume error over the pairs where the
metric is defined (NSD/HD95 are undefined when either mask is empty, see `metrics`); breakdowns by site, phase,
manufacturer and by lesion size bucket, where a case's bucket is its *total* ground-truth lesion volume
(`detection.size_bucket`: <1, 1–5, 5–20, >20 mL; "no lesion" when the lesion mask is empty). Structures whose
ground truth or prediction is *missing* (unknown, not empty) are skipped and listed, never scored as empty.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.blobstore import BlobStore
from backend.core.errors import InvalidInput, NotFound
from backend.evaluation import detection, metrics
from backend.imaging import chunks, nifti
from backend.jobs import service as jobs
from backend.labels import service as labels
from backend.models import (
    EvaluationCase,
    EvaluationDetection,
    EvaluationRun,
    Job,
    LabelVersion,
    LabelVersionStructure,
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
from backend.registry import service as registry

MAX_PAIRS = 50_000
FINAL = ("succeeded", "failed")
CASE_COLUMNS = (
    "case_id",
    "scan_id",
    "site",
    "phase",
    "manufacturer",
    "structure",
    "gt_version_id",
    "pred_version_id",
    "dsc",
    "nsd",
    "nsd_tolerance_mm",
    "hd95",
    "gt_ml",
    "pred_ml",
    "volume_error_ml",
    "volume_error_rel",
    "gt_empty",
    "pred_empty",
    "surface_status",
)


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


@dataclass(frozen=True)
class StructurePlan:
    """One structure of one pair: where both masks are and the NSD tolerance."""

    structure_id: int
    name: str
    gt_status: str
    gt_digest: str | None
    pred_status: str
    pred_digest: str | None
    tolerance_mm: float


@dataclass(frozen=True)
class CasePlan:
    """One scan to score: its geometry, both versions and the structures (plain data, no session needed)."""

    scan_id: int
    case_id: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    gt_version_id: int
    pred_version_id: int
    structures: list[StructurePlan]
    probability_digest: str | None


@dataclass
class CaseOutcome:
    """The scores of one scan: per structure, the skipped structures, and the detection outcome."""

    plan: CasePlan
    scores: dict[str, metrics.SegmentationScores] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    detection: detection.CaseDetection | None = None


# --- creating a run ------------------------------------------------------------------------------------------


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


def _detection_config(data: Mapping[str, Any] | None) -> detection.DetectionConfig:
    try:
        return detection.DetectionConfig.from_dict(data)
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
    # The request's tolerance, else the project's setting {"evaluation": {"nsd_tolerance_mm": ...}}, else 1 mm.
    project_settings = (project.settings or {}).get("evaluation")
    configured = project_settings.get("nsd_tolerance_mm") if isinstance(project_settings, dict) else None
    tolerance = _tolerances(request.nsd_tolerance_mm if request.nsd_tolerance_mm is not None else configured, schema)
    detect = _detection_config(request.detection)
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
            "nsd_definition": metrics.NSD_DEFINITION,
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
        details={"split": split, "cases": len(pairs), "structures": names, "model_version_id": run.model_version_id},
    )
    return run


def _default_name(model: Model | None, version: ModelVersion | None, split: str) -> str:
    if model is not None and version is not None:
        return f"{model.name} v{version.number} on {split}"
    return f"label versions on {split}"


def launch(db: Session, project: Project, actor: User, request: EvaluationRequest) -> tuple[EvaluationRun, Job]:
    """Create a run and its queued `cpu` job (the caller commits, then calls `dispatch`)."""
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


def dispatch(db: Session, job: Job) -> None:
    """Send a committed evaluation job to the cpu queue (an unreachable broker leaves it queued, resendable)."""
    jobs.dispatch(db, [job])


# --- reading runs --------------------------------------------------------------------------------------------


def get_run(db: Session, run_id: int) -> EvaluationRun:
    """An evaluation run by id."""
    run = db.get(EvaluationRun, run_id)
    if run is None:
        raise NotFound(f"evaluation {run_id} not found")
    return run


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


# --- executing a run -----------------------------------------------------------------------------------------


def plan_cases(db: Session, run: EvaluationRun) -> list[CasePlan]:
    """Resolve every pair of a run into plain data: geometry, manifest digests, tolerance, probability map."""
    config = run.config
    schema = {s.name: s for s in projects.structures_of(db, run.project_id)}
    names = [n for n in config["structures"] if n in schema]
    lesion = config["detection"]["lesion_structure"]
    plans = []
    for pair in config["pairs"]:
        scan = db.get(Scan, pair["scan_id"])
        gt = db.get(LabelVersion, pair["gt_version_id"])
        pred = db.get(LabelVersion, pair["pred_version_id"])
        if scan is None or gt is None or pred is None:
            continue  # deleted since the run was planned
        gt_rows = _entries(gt)
        pred_rows = _entries(pred)
        structures = []
        for name in names:
            sid = schema[name].id
            g, p = gt_rows.get(sid), pred_rows.get(sid)
            structures.append(
                StructurePlan(
                    structure_id=sid,
                    name=name,
                    gt_status=g.status if g else "missing",
                    gt_digest=g.manifest_digest if g else None,
                    pred_status=p.status if p else "missing",
                    pred_digest=p.manifest_digest if p else None,
                    tolerance_mm=metrics.tolerance_for(name, config["nsd_tolerance_mm"]),
                )
            )
        probability = None
        if pair.get("prediction_id"):
            prediction = db.get(Prediction, pair["prediction_id"])
            maps = prediction.maps if prediction is not None else {}
            probability = (maps.get(lesion) or {}).get("probability")
        plans.append(
            CasePlan(
                scan_id=scan.id,
                case_id=scan.case_id,
                shape=(int(scan.shape[0]), int(scan.shape[1]), int(scan.shape[2])),
                spacing=(float(scan.spacing[0]), float(scan.spacing[1]), float(scan.spacing[2])),
                gt_version_id=gt.id,
                pred_version_id=pred.id,
                structures=structures,
                probability_digest=probability,
            )
        )
    return plans


def _entries(version: LabelVersion) -> dict[int, LabelVersionStructure]:
    return {entry.structure_id: entry for entry in version.structures}


def _mask(blobs: BlobStore, shape: tuple[int, int, int], status: str, digest: str | None) -> np.ndarray:
    if status != "present" or not digest:
        return np.zeros(shape, dtype=bool)
    return chunks.assemble_mask(labels.load_manifest(blobs, digest), blobs.get_bytes)


def _probability(blobs: BlobStore, digest: str, shape: tuple[int, int, int]) -> np.ndarray | None:
    """A stored uint8 probability map (p·255) as floats in [0, 1]; None when it does not fit the scan."""
    data = nifti.load_nifti_bytes(blobs.get_bytes(digest), "probability.nii.gz").data
    if tuple(data.shape) != shape:
        return None
    return np.asarray(data, dtype=np.float32) / np.float32(255.0)


def compute_case(blobs: BlobStore, plan: CasePlan, detection_config: Mapping[str, Any]) -> CaseOutcome:
    """Score every structure of one scan and, when its lesion structure is evaluated, detect lesions."""
    outcome = CaseOutcome(plan=plan)
    lesion_name = detection_config["lesion_structure"]
    for structure in plan.structures:
        if structure.gt_status != "present":
            outcome.skipped.append({"structure": structure.name, "reason": "ground truth missing"})
            continue
        if structure.pred_status != "present":
            outcome.skipped.append({"structure": structure.name, "reason": "prediction missing"})
            continue
        gt = _mask(blobs, plan.shape, structure.gt_status, structure.gt_digest)
        pred = (
            gt
            if structure.pred_digest == structure.gt_digest
            else _mask(blobs, plan.shape, structure.pred_status, structure.pred_digest)
        )
        outcome.scores[structure.name] = metrics.evaluate_pair(
            gt, pred, plan.spacing, nsd_tolerance_mm=structure.tolerance_mm
        )
        if structure.name == lesion_name:
            config = detection.DetectionConfig.from_dict(
                {k: detection_config[k] for k in detection.DetectionConfig.__dataclass_fields__}
            )
            probability = _probability(blobs, plan.probability_digest, plan.shape) if plan.probability_digest else None
            outcome.detection = detection.detect_case(gt, pred, plan.spacing, config, probability)
    return outcome


def mark_running(db: Session, run: EvaluationRun) -> None:
    """Record that a worker (or the CLI) started the run."""
    run.status = "running"
    run.error = None
    db.flush()


def store_results(db: Session, run: EvaluationRun, outcomes: Iterable[CaseOutcome]) -> None:
    """Replace the run's stored results with these outcomes and compute its summary (idempotent)."""
    db.execute(delete(EvaluationCase).where(EvaluationCase.run_id == run.id))
    db.execute(delete(EvaluationDetection).where(EvaluationDetection.run_id == run.id))
    skipped: list[dict[str, Any]] = []
    rows: list[EvaluationCase] = []
    for outcome in outcomes:
        plan = outcome.plan
        ids = {s.name: s.structure_id for s in plan.structures}
        for name, scores in outcome.scores.items():
            rows.append(
                EvaluationCase(
                    run_id=run.id,
                    scan_id=plan.scan_id,
                    structure_id=ids[name],
                    gt_version_id=plan.gt_version_id,
                    pred_version_id=plan.pred_version_id,
                    dsc=scores.dsc,
                    nsd=scores.nsd,
                    hd95=scores.hd95,
                    nsd_tolerance_mm=scores.nsd_tolerance_mm,
                    gt_ml=scores.gt_ml,
                    pred_ml=scores.pred_ml,
                    volume_error_ml=scores.volume_error_ml,
                    volume_error_rel=scores.volume_error_rel,
                    gt_empty=scores.gt_empty,
                    pred_empty=scores.pred_empty,
                    surface_status=scores.surface_status,
                )
            )
        skipped += [{"case_id": plan.case_id, **item} for item in outcome.skipped]
        if outcome.detection is not None:
            found = outcome.detection
            db.add(
                EvaluationDetection(
                    run_id=run.id,
                    scan_id=plan.scan_id,
                    tumour=found.tumour,
                    detected=found.detected,
                    confidence=found.confidence,
                    confidence_source=found.confidence_source,
                    predicted_components=found.predicted_components,
                    false_positive_components=found.false_positive_components,
                    predicted_volume_ml=found.predicted_volume_ml,
                    gt_lesions=[asdict(lesion) for lesion in found.gt_lesions],
                )
            )
    db.add_all(rows)
    db.flush()
    run.summary = summarize(db, run, skipped)
    run.status = "succeeded"
    run.error = None
    run.finished_at = datetime.now(UTC)
    db.flush()


def execute_run(
    db: Session, blobs: BlobStore, run: EvaluationRun, progress: Callable[[int, int], None] | None = None
) -> EvaluationRun:
    """Run an evaluation in this process and session (CLI --sync, tests); replaces earlier results."""
    mark_running(db, run)
    plans = plan_cases(db, run)
    outcomes = []
    for index, plan in enumerate(plans):
        outcomes.append(compute_case(blobs, plan, run.config["detection"]))
        if progress is not None:
            progress(index + 1, len(plans))
    store_results(db, run, outcomes)
    return run


# --- summaries -----------------------------------------------------------------------------------------------


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    defined = [float(v) for v in values if v is not None]
    return {
        "n": len(defined),
        "undefined": len(values) - len(defined),
        "mean": statistics.fmean(defined) if defined else None,
        "median": statistics.median(defined) if defined else None,
    }


def _structure_block(rows: Sequence[EvaluationCase]) -> dict[str, Any]:
    return {
        "pairs": len(rows),
        "dsc": _stats([r.dsc for r in rows]),
        "nsd": _stats([r.nsd for r in rows]),
        "hd95": _stats([r.hd95 for r in rows]),
        "volume_error_ml": _stats([r.volume_error_ml for r in rows]),
        "volume_error_rel": _stats([r.volume_error_rel for r in rows]),
        "gt_empty": sum(r.gt_empty for r in rows),
        "pred_empty": sum(r.pred_empty for r in rows),
        "both_empty": sum(r.gt_empty and r.pred_empty for r in rows),
    }


def _compact(rows: Sequence[EvaluationCase]) -> dict[str, Any]:
    dsc, nsd = _stats([r.dsc for r in rows]), _stats([r.nsd for r in rows])
    return {"pairs": len(rows), "dsc_mean": dsc["mean"], "dsc_median": dsc["median"], "nsd_mean": nsd["mean"]}


def _breakdown(
    rows: Sequence[EvaluationCase], names: Mapping[int, str], key: Callable[[EvaluationCase], str]
) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, list[EvaluationCase]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        groups[key(row)][names[row.structure_id]].append(row)
    return {
        group: {name: _compact(members) for name, members in sorted(by_structure.items())}
        for group, by_structure in sorted(groups.items())
    }


def summarize(db: Session, run: EvaluationRun, skipped: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The run's summary from its stored rows: per structure, breakdowns, detection, conventions."""
    rows = list(db.scalars(select(EvaluationCase).where(EvaluationCase.run_id == run.id)))
    names = {s.id: s.name for s in projects.structures_of(db, run.project_id)}
    scans = {s.id: s for s in db.scalars(select(Scan).where(Scan.id.in_({r.scan_id for r in rows} or {-1}))).all()}
    lesion = run.config["detection"]["lesion_structure"]
    lesion_ml = {r.scan_id: r.gt_ml for r in rows if names[r.structure_id] == lesion}

    def bucket(row: EvaluationCase) -> str:
        volume = lesion_ml.get(row.scan_id)
        if volume is None:
            return "lesion not evaluated"
        return "no lesion" if volume == 0 else detection.size_bucket(volume)

    def meta(attribute: str) -> Callable[[EvaluationCase], str]:
        return lambda row: str(getattr(scans[row.scan_id], attribute) or "unknown")

    by_structure: dict[str, list[EvaluationCase]] = defaultdict(list)
    for row in rows:
        by_structure[names[row.structure_id]].append(row)
    found = list(db.scalars(select(EvaluationDetection).where(EvaluationDetection.run_id == run.id)))
    detection_block = None
    if found:
        cases = [
            detection.CaseDetection.from_dict(
                {
                    "tumour": f.tumour,
                    "detected": f.detected,
                    "confidence": f.confidence,
                    "confidence_source": f.confidence_source,
                    "predicted_components": f.predicted_components,
                    "false_positive_components": f.false_positive_components,
                    "predicted_volume_ml": f.predicted_volume_ml,
                    "gt_lesions": f.gt_lesions,
                }
            )
            for f in found
        ]
        detection_block = {**detection.summarize(cases), "config": run.config["detection"]}
    return {
        "nsd_definition": metrics.NSD_DEFINITION,
        "empty_policy": metrics.EMPTY_POLICY,
        "hd_percentile": metrics.HD_PERCENTILE,
        "nsd_tolerance_mm": run.config["nsd_tolerance_mm"],
        "cases": len({r.scan_id for r in rows}),
        "pairs": len(rows),
        "structures": {name: _structure_block(members) for name, members in sorted(by_structure.items())},
        "by_lesion_size": _breakdown(rows, names, bucket),
        "lesion_size_buckets": [*detection.SIZE_BUCKETS, "no lesion"],
        "by_site": _breakdown(rows, names, meta("site")),
        "by_phase": _breakdown(rows, names, meta("phase")),
        "by_manufacturer": _breakdown(rows, names, meta("manufacturer")),
        "detection": detection_block,
        "skipped": list(skipped)[:1000],
        "skipped_count": len(skipped),
        "unpredicted_cases": run.config.get("unpredicted_cases", []),
    }


# --- cases and leaderboard -----------------------------------------------------------------------------------


def case_rows(db: Session, run: EvaluationRun) -> list[dict[str, Any]]:
    """Every stored (scan, structure) result of a run with its scan metadata (null = undefined)."""
    query = (
        select(EvaluationCase, Scan, Structure.name)
        .join(Scan, Scan.id == EvaluationCase.scan_id)
        .join(Structure, Structure.id == EvaluationCase.structure_id)
        .where(EvaluationCase.run_id == run.id)
        .order_by(Scan.case_id, Structure.position)
    )
    out = []
    for case, scan, name in db.execute(query):
        out.append(
            {
                "case_id": scan.case_id,
                "scan_id": scan.id,
                "site": scan.site,
                "phase": scan.phase,
                "manufacturer": scan.manufacturer,
                "structure": name,
                "gt_version_id": case.gt_version_id,
                "pred_version_id": case.pred_version_id,
                "dsc": case.dsc,
                "nsd": case.nsd,
                "nsd_tolerance_mm": case.nsd_tolerance_mm,
                "hd95": case.hd95,
                "gt_ml": case.gt_ml,
                "pred_ml": case.pred_ml,
                "volume_error_ml": case.volume_error_ml,
                "volume_error_rel": case.volume_error_rel,
                "gt_empty": case.gt_empty,
                "pred_empty": case.pred_empty,
                "surface_status": case.surface_status,
            }
        )
    return out


def detection_rows(db: Session, run: EvaluationRun) -> list[dict[str, Any]]:
    """Every stored per-case detection outcome of a run."""
    query = (
        select(EvaluationDetection, Scan.case_id)
        .join(Scan, Scan.id == EvaluationDetection.scan_id)
        .where(EvaluationDetection.run_id == run.id)
        .order_by(Scan.case_id)
    )
    return [
        {
            "case_id": case_id,
            "scan_id": row.scan_id,
            "tumour": row.tumour,
            "detected": row.detected,
            "confidence": row.confidence,
            "confidence_source": row.confidence_source,
            "predicted_components": row.predicted_components,
            "false_positive_components": row.false_positive_components,
            "predicted_volume_ml": row.predicted_volume_ml,
            "gt_lesions": row.gt_lesions,
        }
        for row, case_id in db.execute(query)
    ]


def cases_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The case rows as CSV; undefined NSD/HD95 (and relative volume error) are written as 'undefined'."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CASE_COLUMNS)
    undefined_ok = {"nsd", "hd95", "volume_error_rel"}
    for row in rows:
        writer.writerow(
            [
                "undefined" if column in undefined_ok and row[column] is None else _cell(row[column])
                for column in CASE_COLUMNS
            ]
        )
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def leaderboard(
    db: Session, project_id: int, structure: str | None = None, split: str | None = None
) -> list[dict[str, Any]]:
    """Model versions ranked per structure by mean DSC (then mean NSD) of each one's latest finished run.

    With a split, only runs on that split count (so that every row is measured on the same scans).
    """
    schema = projects.structures_of(db, project_id)
    wanted = projects.find_structure(schema, structure).name if structure else None
    latest: dict[int, EvaluationRun] = {}
    for run in db.scalars(
        select(EvaluationRun)
        .where(
            EvaluationRun.project_id == project_id,
            EvaluationRun.status == "succeeded",
            EvaluationRun.model_version_id.is_not(None),
        )
        .order_by(EvaluationRun.finished_at, EvaluationRun.id)
    ):
        assert run.model_version_id is not None
        if split and run.config.get("split") != split:
            continue
        latest[run.model_version_id] = run
    entries = []
    for version_id, run in latest.items():
        version = db.get(ModelVersion, version_id)
        model = registry.get_model(db, version.model_id) if version is not None else None
        for name, block in run.summary.get("structures", {}).items():
            if wanted and name != wanted:
                continue
            entries.append(
                {
                    "structure": name,
                    "model_version_id": version_id,
                    "model": model.name if model else None,
                    "version": version.number if version else None,
                    "run_id": run.id,
                    "run_name": run.name,
                    "split": run.config.get("split"),
                    "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                    "pairs": block["pairs"],
                    "dsc_mean": block["dsc"]["mean"],
                    "nsd_mean": block["nsd"]["mean"],
                    "hd95_median": block["hd95"]["median"],
                    "nsd_definition": run.summary.get("nsd_definition"),
                }
            )
    entries.sort(key=lambda e: (e["structure"], -(e["dsc_mean"] or 0.0), -(e["nsd_mean"] or 0.0)))
    rank = 0
    previous = None
    for entry in entries:
        rank = rank + 1 if entry["structure"] == previous else 1
        previous = entry["structure"]
        entry["rank"] = rank
    return entries


def report(db: Session, run: EvaluationRun) -> dict[str, Any]:
    """The whole run as one JSON document: config (without the pair list), summary, cases and detection."""
    return {
        "id": run.id,
        "name": run.name,
        "status": run.status,
        "model_version_id": run.model_version_id,
        "nsd_definition": metrics.NSD_DEFINITION,
        "empty_policy": metrics.EMPTY_POLICY,
        "config": {k: v for k, v in run.config.items() if k != "pairs"},
        "summary": run.summary,
        "cases": case_rows(db, run),
        "detection": detection_rows(db, run),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }
