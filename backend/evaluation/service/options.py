"""What a lead can choose when starting an evaluation: definitions, defaults, splits and predicted model versions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.evaluation import detection, metrics
from backend.evaluation import settings as evaluation_settings
from backend.models import Model, ModelVersion, Prediction, Project, Scan, ScanTask
from backend.projects import service as projects


def evaluation_options(db: Session, project: Project) -> dict[str, Any]:
    """Metric definitions, the project's defaults, splits (scans, approved scans), structures and model versions
    with predictions (how many scans each predicted), so that a page can offer only choices that can run."""
    approved = ScanTask.approved_version_id.is_not(None)
    split_rows = db.execute(
        select(Scan.split, func.count(Scan.id), func.count(ScanTask.approved_version_id))
        .outerjoin(ScanTask, ScanTask.scan_id == Scan.id)
        .where(Scan.project_id == project.id)
        .group_by(Scan.split)
    ).all()
    splits = [
        {"split": split, "scans": int(scans), "approved_scans": int(with_truth)}
        for split, scans, with_truth in sorted(split_rows, key=lambda row: str(row[0] or ""))
        if split
    ]
    total = sum(int(row[1]) for row in split_rows)
    total_approved = int(
        db.scalar(
            select(func.count())
            .select_from(ScanTask)
            .join(Scan, Scan.id == ScanTask.scan_id)
            .where(Scan.project_id == project.id, approved)
        )
        or 0
    )
    splits.append({"split": "all", "scans": total, "approved_scans": total_approved})
    versions = db.execute(
        select(ModelVersion, Model.name, func.count(func.distinct(Prediction.scan_id)))
        .join(Model, Model.id == ModelVersion.model_id)
        .join(Prediction, Prediction.model_version_id == ModelVersion.id)
        .where(Model.project_id == project.id)
        .group_by(ModelVersion.id, Model.name)
        .order_by(Model.name, ModelVersion.number)
    ).all()
    return {
        "metric_definitions": [
            {"name": name, "description": text, "default": name == metrics.DEFAULT_METRIC_DEFINITION}
            for name, text in metrics.METRIC_DEFINITIONS.items()
        ],
        "defaults": evaluation_settings.project_defaults(project.settings),
        "documented_defaults": {
            "nsd_tolerance_mm": metrics.DEFAULT_NSD_TOLERANCE_MM,
            "detection_min_volume_mm3": detection.DEFAULT_MIN_VOLUME_MM3,
            "metric_definition": metrics.DEFAULT_METRIC_DEFINITION,
        },
        "empty_policy": metrics.EMPTY_POLICY,
        "splits": splits,
        "structures": [s.name for s in projects.structures_of(db, project.id)],
        "model_versions": [
            {
                "model_version_id": version.id,
                "model": name,
                "version": version.number,
                "promoted": version.is_promoted,
                "predicted_scans": int(count),
            }
            for version, name, count in versions
        ],
    }
