"""Reading results: case and detection rows, the cases CSV, the leaderboard and the whole-run report."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.evaluation import metrics
from backend.models import (
    EvaluationCase,
    EvaluationDetection,
    EvaluationRun,
    ModelVersion,
    Scan,
    Structure,
)
from backend.projects import service as projects
from backend.registry import service as registry

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
    "metric_definition",
)


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
    definition = str(run.config.get("metric_definition") or "lorensen")  # runs before the choice: Lorensen
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
                "metric_definition": definition,
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
    db: Session,
    project_id: int,
    structure: str | None = None,
    split: str | None = None,
    metric_definition: str | None = None,
) -> list[dict[str, Any]]:
    """Model versions ranked per structure by mean DSC (then mean NSD) of each one's latest finished run.

    With a split, only runs on that split count (so that every row is measured on the same scans); with a metric
    definition, only runs that used it (NSD/HD95 of different definitions do not rank against each other).
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
        if metric_definition and str(run.config.get("metric_definition") or "lorensen") != metric_definition:
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
                    "metric_definition": run.summary.get("metric_definition", "lorensen"),
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
        "metric_definition": str(run.config.get("metric_definition") or "lorensen"),
        "nsd_definition": metrics.describe_definition(str(run.config.get("metric_definition") or "lorensen")),
        "empty_policy": metrics.EMPTY_POLICY,
        "config": {k: v for k, v in run.config.items() if k != "pairs"},
        "summary": run.summary,
        "cases": case_rows(db, run),
        "detection": detection_rows(db, run),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }
