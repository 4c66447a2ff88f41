"""Executing a run: plain-data case plans, scoring one case (no database), storing the results."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import delete
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.evaluation import detection, metrics
from backend.evaluation.service.summary import summarize
from backend.imaging import chunks, nifti
from backend.labels import service as labels
from backend.models import (
    EvaluationCase,
    EvaluationDetection,
    EvaluationRun,
    LabelVersion,
    Prediction,
    Scan,
)
from backend.projects import service as projects


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
    metric_definition: str = metrics.DEFAULT_METRIC_DEFINITION


@dataclass
class CaseOutcome:
    """The scores of one scan: per structure, the skipped structures, and the detection outcome."""

    plan: CasePlan
    scores: dict[str, metrics.SegmentationScores] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    detection: detection.CaseDetection | None = None


def plan_cases(db: Session, run: EvaluationRun) -> list[CasePlan]:
    """Resolve every pair of a run into plain data: geometry, manifest digests, tolerance, probability map."""
    config = run.config
    schema = {s.name: s for s in projects.structures_of(db, run.project_id)}
    names = [n for n in config["structures"] if n in schema]
    lesion = config["detection"]["lesion_structure"]
    definition = str(config.get("metric_definition") or "lorensen")  # runs planned before the choice: Lorensen
    plans = []
    for pair in config["pairs"]:
        scan = db.get(Scan, pair["scan_id"])
        gt = db.get(LabelVersion, pair["gt_version_id"])
        pred = db.get(LabelVersion, pair["pred_version_id"])
        if scan is None or gt is None or pred is None:
            continue  # deleted since the run was planned
        gt_rows = labels.entries_by_structure(gt)
        pred_rows = labels.entries_by_structure(pred)
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
                metric_definition=definition,
            )
        )
    return plans


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
            gt, pred, plan.spacing, nsd_tolerance_mm=structure.tolerance_mm, definition=plan.metric_definition
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
