"""Run summaries: per-structure statistics and breakdowns by site, phase, manufacturer and lesion size."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.evaluation import detection, metrics
from backend.models import (
    EvaluationCase,
    EvaluationDetection,
    EvaluationRun,
    Scan,
)
from backend.projects import service as projects


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
    definition = str(run.config.get("metric_definition") or "lorensen")
    return {
        "metric_definition": definition,
        "nsd_definition": metrics.describe_definition(definition),
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
