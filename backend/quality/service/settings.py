"""Quality settings: the effective multi-reader, QA and plausible-volume settings of a project.

Settings (in ``project.settings["workflow"]``, validated by `backend.workflow.service.validate_settings`):

- ``multi_reader``: ``{"agreement_threshold": 0.8 | {"default": 0.8, "<structure>": x}, "nsd_tolerance_mm": 1.0}``;
  the default per-structure threshold is 0.8, and 0.2 for ``pancreatic_lesion`` (PanTS: tumour Dice < 20 %
  goes to senior review).
- ``qa``: ``{"small_lesion_voxels": 50, "pancreas_parts_ratio": 1.5, "outside_parent_fraction": 0.01,
  "expected_orientation": "RAS" | null, "non_contrast_max_hu": 120, "contrast_min_hu": {"arterial": 100,
  "venous": 100, "delay": 70}, "disabled_rules": [...]}``.
- ``plausible_volume_ml``: ``{"<structure>": [min | null, max | null]}``, merged over the PanTS defaults.
"""

from __future__ import annotations

from typing import Any

from backend.core.errors import InvalidInput
from backend.imaging import qa_rules
from backend.models import Project
from backend.workflow import service as workflow

DEFAULT_AGREEMENT_THRESHOLD = 0.8
DEFAULT_STRUCTURE_THRESHOLDS: dict[str, float] = {"pancreatic_lesion": 0.2}


def quality_settings(project: Project) -> dict[str, Any]:
    """The project's quality settings, from its `settings["workflow"]` section."""
    raw = (project.settings or {}).get("workflow")
    section: dict[str, Any] = raw if isinstance(raw, dict) else {}
    keys = ("multi_reader", "qa", "plausible_volume_ml")
    merged: dict[str, Any] = {key: section[key] for key in keys if key in section}
    # Settings stored before validation existed (or written directly) must not break QA: a bad section is
    # ignored and its defaults apply.
    valid: dict[str, Any] = {}
    for key, value in merged.items():
        try:
            valid.update(workflow.validate_settings({key: value}))
        except InvalidInput:
            continue
    return valid


def agreement_threshold(project: Project, structure: str) -> float:
    """The agreement (mean pairwise Dice) below which a structure goes to adjudication."""
    configured = quality_settings(project).get("multi_reader", {}).get("agreement_threshold")
    if isinstance(configured, dict):
        if structure in configured:
            return float(configured[structure])
        if structure in DEFAULT_STRUCTURE_THRESHOLDS:
            return DEFAULT_STRUCTURE_THRESHOLDS[structure]
        return float(configured.get("default", DEFAULT_AGREEMENT_THRESHOLD))
    if isinstance(configured, int | float):
        return float(configured)
    return DEFAULT_STRUCTURE_THRESHOLDS.get(structure, DEFAULT_AGREEMENT_THRESHOLD)


def qa_config(project: Project) -> qa_rules.QAConfig:
    """The QA thresholds of a project (defaults overridden by its settings)."""
    stored = quality_settings(project)
    qa = stored.get("qa", {}) or {}
    volumes: dict[str, tuple[float | None, float | None]] = dict(qa_rules.DEFAULT_PLAUSIBLE_VOLUME_ML)
    for name, bounds in (stored.get("plausible_volume_ml") or {}).items():
        volumes[name] = (bounds[0], bounds[1])
    contrast = dict(qa_rules.DEFAULT_CONTRAST_MIN_HU)
    contrast.update(qa.get("contrast_min_hu", {}))
    return qa_rules.QAConfig(
        small_lesion_voxels=int(qa.get("small_lesion_voxels", 50)),
        pancreas_parts_ratio=float(qa.get("pancreas_parts_ratio", 1.5)),
        outside_parent_fraction=float(qa.get("outside_parent_fraction", 0.01)),
        expected_orientation=qa.get("expected_orientation"),
        contrast_min_hu=contrast,
        non_contrast_max_hu=float(qa.get("non_contrast_max_hu", qa_rules.DEFAULT_NON_CONTRAST_MAX_HU)),
        plausible_volume_ml=volumes,
        disabled_rules=frozenset(qa.get("disabled_rules", [])),
    )
