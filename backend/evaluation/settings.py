"""A project's evaluation defaults (`settings["evaluation"]`), checked here and read by evaluation runs.

Keys (each optional; a run's request overrides them, and without either the documented default applies):

- `nsd_tolerance_mm` — one distance in mm or {structure or "default": mm}; 1 mm by default (checked by the
  projects service, which knows the structure names).
- `detection_min_volume_mm3` — the minimum volume of a predicted lesion component that counts in tumour
  detection; `detection.DEFAULT_MIN_VOLUME_MM3` (50 mm³) by default, so that one stray voxel does not make a
  tumour-free patient a false positive (see backend/evaluation/detection.py for the reasoning); 0 counts all.
- `metric_definition` — how NSD and HD95 measure a surface: "deepmind" (default; DeepMind's surface-distance),
  "lorensen" or "monai" (see backend/evaluation/metrics.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from backend.core.errors import InvalidInput
from backend.evaluation import detection, metrics

SETTINGS_KEYS = ("nsd_tolerance_mm", "detection_min_volume_mm3", "metric_definition")
MAX_MIN_VOLUME_MM3 = 1e6


def validate_evaluation_settings(section: Mapping[str, Any]) -> dict[str, Any]:
    """Check `detection_min_volume_mm3` and `metric_definition` of an evaluation settings object (422 otherwise).

    Other keys than SETTINGS_KEYS are refused; `nsd_tolerance_mm` is left to the caller.
    """
    unknown = sorted(set(section) - set(SETTINGS_KEYS))
    if unknown:
        raise InvalidInput(f"unknown evaluation settings {unknown}; known: {list(SETTINGS_KEYS)}")
    out: dict[str, Any] = {}
    volume = section.get("detection_min_volume_mm3")
    if volume is not None:
        out["detection_min_volume_mm3"] = min_volume(volume, "evaluation.detection_min_volume_mm3")
    definition = section.get("metric_definition")
    if definition is not None:
        out["metric_definition"] = definition_name(definition, "evaluation.metric_definition")
    return out


def min_volume(value: Any, where: str) -> float:
    """A detection volume threshold in mm³ within [0, 1e6]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{where} must be a volume in mm³")
    if not 0 <= value <= MAX_MIN_VOLUME_MM3:
        raise InvalidInput(f"{where} must be within [0, {MAX_MIN_VOLUME_MM3:g}] mm³, got {value}")
    return float(value)


def definition_name(value: Any, where: str) -> str:
    """A known metric definition name."""
    if not isinstance(value, str) or value not in metrics.METRIC_DEFINITIONS:
        raise InvalidInput(f"{where} must be one of {list(metrics.METRIC_DEFINITIONS)}, got {value!r}")
    return value


def project_defaults(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The evaluation defaults of a project: its settings where given, else the documented defaults."""
    section = (settings or {}).get("evaluation")
    section = section if isinstance(section, dict) else {}
    volume = section.get("detection_min_volume_mm3")
    definition = section.get("metric_definition")
    return {
        "nsd_tolerance_mm": section.get("nsd_tolerance_mm", metrics.DEFAULT_NSD_TOLERANCE_MM),
        "detection_min_volume_mm3": float(volume) if volume is not None else detection.DEFAULT_MIN_VOLUME_MM3,
        "metric_definition": definition
        if definition in metrics.METRIC_DEFINITIONS
        else metrics.DEFAULT_METRIC_DEFINITION,
    }
