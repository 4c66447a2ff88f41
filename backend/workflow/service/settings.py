"""Workflow settings: the one validator of a project's `settings["workflow"]` section, and its defaults.

The section holds the review levels and lease length used here, and the quality sections (`multi_reader`, `qa`,
`plausible_volume_ml`) that the quality service reads; all of them are checked in this module, so a PATCH of
project settings and QA reading stored settings apply the same rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from backend.core.errors import InvalidInput
from backend.imaging import qa_rules
from backend.models import Project

DEFAULT_REVIEW_LEVELS = ("review",)
DEFAULT_LEASE_MINUTES = 20.0
SETTINGS_KEYS = ("review_levels", "lease_minutes", "multi_reader", "qa", "plausible_volume_ml")

_MULTI_READER_KEYS = {"agreement_threshold", "nsd_tolerance_mm", "sample_fraction", "readers", "seed"}
_QA_NUMBER_KEYS = {
    "small_lesion_voxels": (1.0, 1e9),
    "pancreas_parts_ratio": (1.0, 1e6),
    "outside_parent_fraction": (0.0, 1.0),
    "non_contrast_max_hu": (-1024.0, 4000.0),
}
_QA_KEYS = {*_QA_NUMBER_KEYS, "expected_orientation", "contrast_min_hu", "disabled_rules", "expected_structures"}


@dataclass(frozen=True)
class WorkflowConfig:
    """A project's workflow settings with defaults filled in."""

    review_levels: tuple[str, ...] = DEFAULT_REVIEW_LEVELS
    lease_minutes: float = DEFAULT_LEASE_MINUTES


def config_of(project: Project) -> WorkflowConfig:
    """The workflow configuration of a project (one review level and 20-minute leases by default)."""
    raw = (project.settings or {}).get("workflow") or {}
    levels = tuple(raw.get("review_levels") or DEFAULT_REVIEW_LEVELS)
    return WorkflowConfig(review_levels=levels, lease_minutes=float(raw.get("lease_minutes", DEFAULT_LEASE_MINUTES)))


def validate_settings(value: Any) -> dict[str, Any]:
    """Check and normalise a `workflow` settings object: review levels, lease minutes and the quality sections.

    Raises InvalidInput (422) with a message naming the offending key.
    """
    if not isinstance(value, dict):
        raise InvalidInput("workflow settings must be an object")
    unknown = sorted(set(value) - set(SETTINGS_KEYS))
    if unknown:
        raise InvalidInput(f"unknown workflow settings {unknown}; known: {list(SETTINGS_KEYS)}")
    out: dict[str, Any] = {}
    if "review_levels" in value:
        levels = value["review_levels"]
        if (
            not isinstance(levels, list)
            or not 1 <= len(levels) <= 5
            or not all(isinstance(n, str) and 0 < len(n.strip()) <= 40 for n in levels)
        ):
            raise InvalidInput('workflow.review_levels must list 1 to 5 level names, e.g. ["junior", "senior"]')
        names = [n.strip() for n in levels]
        if len(set(names)) != len(names):
            raise InvalidInput("workflow.review_levels names must be unique")
        out["review_levels"] = names
    if "lease_minutes" in value:
        minutes = value["lease_minutes"]
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not 1 <= minutes <= 1440:
            raise InvalidInput("workflow.lease_minutes must be a number of minutes in 1..1440")
        out["lease_minutes"] = minutes
    # Every section's shape is checked before any section's content, so the first message names the coarser fault.
    for key in ("multi_reader", "qa", "plausible_volume_ml"):
        if key in value and not isinstance(value[key], dict):
            raise InvalidInput(f"workflow.{key} must be an object")
    if "multi_reader" in value:
        out["multi_reader"] = _validate_multi_reader(value["multi_reader"])
    if "qa" in value:
        out["qa"] = _validate_qa(value["qa"])
    if "plausible_volume_ml" in value:
        out["plausible_volume_ml"] = _validate_volumes(value["plausible_volume_ml"])
    return out


def merge_settings(current: dict[str, Any] | None, changes: dict[str, Any]) -> dict[str, Any]:
    """The workflow settings after a PATCH: each given section replaces the stored one."""
    return {**(current or {}), **changes}


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where} must be a number")
    # Whole numbers are compared exactly (a huge one is out of range, not an overflow); floats must be finite.
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"{where} must be a number")
    if not low <= value <= high:
        raise InvalidInput(f"{where} must be within [{low:g}, {high:g}], got {value}")
    return float(value)


def _validate_multi_reader(value: dict[str, Any]) -> dict[str, Any]:
    unknown = set(value) - _MULTI_READER_KEYS
    if unknown:
        raise InvalidInput(f"unknown multi_reader settings {sorted(unknown)}; known: {sorted(_MULTI_READER_KEYS)}")
    out: dict[str, Any] = {}
    if "agreement_threshold" in value:
        threshold = value["agreement_threshold"]
        if isinstance(threshold, dict):
            if not threshold:
                raise InvalidInput("multi_reader.agreement_threshold must not be an empty object")
            out["agreement_threshold"] = {
                str(k): _number(v, f"multi_reader.agreement_threshold.{k}", 0.0, 1.0) for k, v in threshold.items()
            }
        else:
            out["agreement_threshold"] = _number(threshold, "multi_reader.agreement_threshold", 0.0, 1.0)
    if "nsd_tolerance_mm" in value:
        out["nsd_tolerance_mm"] = _number(value["nsd_tolerance_mm"], "multi_reader.nsd_tolerance_mm", 0.0, 100.0)
    if "sample_fraction" in value:
        fraction = _number(value["sample_fraction"], "multi_reader.sample_fraction", 0.0, 1.0)
        if fraction == 0:
            raise InvalidInput("multi_reader.sample_fraction must be above 0")
        out["sample_fraction"] = fraction
    for key, low, high in (("readers", 2, 20), ("seed", 0, 2**31 - 1)):
        if key in value:
            number = value[key]
            if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
                raise InvalidInput(f"multi_reader.{key} must be a whole number within [{low}, {high}]")
            out[key] = number
    return out


def _validate_qa(value: dict[str, Any]) -> dict[str, Any]:
    unknown = set(value) - _QA_KEYS
    if unknown:
        raise InvalidInput(f"unknown qa settings {sorted(unknown)}; known: {sorted(_QA_KEYS)}")
    out: dict[str, Any] = {}
    for key, (low, high) in _QA_NUMBER_KEYS.items():
        if key in value:
            number = _number(value[key], f"qa.{key}", low, high)
            if key == "small_lesion_voxels" and not number.is_integer():
                raise InvalidInput("qa.small_lesion_voxels must be a whole number")
            out[key] = int(number) if key == "small_lesion_voxels" else number
    if "expected_orientation" in value:
        code = value["expected_orientation"]
        if code is not None:
            letters = code.upper() if isinstance(code, str) else ""
            axes = sorted("x" if c in "RL" else "y" if c in "AP" else "z" if c in "SI" else "?" for c in letters)
            if axes != ["x", "y", "z"]:
                raise InvalidInput(
                    "qa.expected_orientation must be a 3-letter axis code naming each axis once "
                    "(R/L, A/P, S/I), such as 'RAS', or null"
                )
            code = letters
        out["expected_orientation"] = code
    if "contrast_min_hu" in value:
        phases = value["contrast_min_hu"]
        known = set(qa_rules.DEFAULT_CONTRAST_MIN_HU)
        if not isinstance(phases, dict) or set(phases) - known:
            raise InvalidInput(f"qa.contrast_min_hu maps phases {sorted(known)} to HU")
        out["contrast_min_hu"] = {k: _number(v, f"qa.contrast_min_hu.{k}", -1024, 4000) for k, v in phases.items()}
    if "expected_structures" in value:
        # Structure names (the quality service resolves them against the schema); null: the default (see
        # backend.quality.service.expected).
        names = value["expected_structures"]
        if names is not None and (
            not isinstance(names, list)
            or len(names) > 1000
            or not all(isinstance(n, str) and 0 < len(n.strip()) <= 100 for n in names)
        ):
            raise InvalidInput("qa.expected_structures is a list of structure names, or null for the default")
        out["expected_structures"] = None if names is None else list(dict.fromkeys(n.strip() for n in names))
    if "disabled_rules" in value:
        rules = value["disabled_rules"]
        if not isinstance(rules, list) or any(r not in qa_rules.RULES for r in rules):
            raise InvalidInput(f"qa.disabled_rules is a list of rule ids from {list(qa_rules.RULES)}")
        out["disabled_rules"] = sorted(set(rules))
    return out


def _validate_volumes(value: dict[str, Any]) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = {}
    for name, bounds in value.items():
        where = f"plausible_volume_ml.{name}"
        if not isinstance(bounds, list | tuple) or len(bounds) != 2:
            raise InvalidInput(f"{where} must be [min_ml|null, max_ml|null]")
        low, high = (None if b is None else _number(b, where, 0.0, 1e7) for b in bounds)
        if low is not None and high is not None and low > high:
            raise InvalidInput(f"{where}: the minimum {low:g} exceeds the maximum {high:g}")
        out[str(name)] = [low, high]
    return out
