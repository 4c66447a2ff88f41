"""QA rules over one label version of one CT scan: the known PanTS label defects and a few sanity checks.

Pure functions with no database. Each rule takes a compact input (per-structure status, voxel counts and
volumes in mL, masks only where geometry matters, the schema's `inside` parents, scan metadata) and returns
findings. `run_rules` runs all of them on a `QAInput`.

Rules (ids are stable; they are stored with each finding):

- ``tumor_flag_without_lesion`` (error): metadata says tumour (tumor?=1) but the pancreatic_lesion mask is empty.
- ``small_lesion`` (warning): a lesion component (26-connected) of fewer than `small_lesion_voxels` (50) voxels.
- ``pancreas_parts_mismatch`` (error): pancreas empty while head/body/tail are not, or the reverse.
- ``pancreas_volume_implausible`` (warning): pancreas volume above `pancreas_parts_ratio` (1.5) x the sum of
  its head/body/tail volumes (PanTS: hundreds of mL while the parts sum to tens).
- ``structure_missing`` (warning): a structure recorded as missing (its file was absent on import).
- ``non_binary_mask`` (info): a mask file stored values off {0, 1} (e.g. floats 0.9999); it was binarised
  with > 0.5 on import. Only evaluated where the import's value report is given.
- ``orientation_differs`` (info): the scan's axis code differs from the expected one (the project's
  majority, or a configured code such as RAS).
- ``phase_mismatch`` (warning): the mean HU inside the aorta contradicts the metadata's contrast phase.
  Thresholds (unenhanced blood is 30-60 HU; a venous aorta 130-200 HU, an arterial one 200-400 HU):
  arterial or venous with a mean below 100 HU, delay below 70 HU, non-contrast above 120 HU.
- ``outside_parent`` (warning): more than `outside_parent_fraction` (1 %) of a sub-structure's voxels lie
  outside its `inside` parent (e.g. pancreas_head voxels outside pancreas).
- ``volume_out_of_range`` (warning): a non-empty structure whose volume is outside its plausible range in mL
  (`DEFAULT_PLAUSIBLE_VOLUME_ML` for the PanTS schema, generous because scans may cut organs at the field of
  view; a project may override it). Empty structures are not judged here (an absent lesion or a
  resected gall bladder is legitimate).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from backend.imaging.nifti import MaskValues

RULES: tuple[str, ...] = (
    "tumor_flag_without_lesion",
    "small_lesion",
    "pancreas_parts_mismatch",
    "pancreas_volume_implausible",
    "structure_missing",
    "non_binary_mask",
    "orientation_differs",
    "phase_mismatch",
    "outside_parent",
    "volume_out_of_range",
)

LESION = "pancreatic_lesion"
PANCREAS = "pancreas"
PANCREAS_PARTS = ("pancreas_head", "pancreas_body", "pancreas_tail")
AORTA = "aorta"

# Plausible adult volumes in mL (min, max); None = no bound. Lower bounds stay low or absent because a scan's
# field of view may cut an organ (lungs, colon, femurs, vessels); the upper bounds catch gross label errors.
DEFAULT_PLAUSIBLE_VOLUME_ML: dict[str, tuple[float | None, float | None]] = {
    "adrenal_gland_left": (None, 40.0),
    "adrenal_gland_right": (None, 40.0),
    "aorta": (None, 600.0),
    "bladder": (None, 1200.0),
    "celiac_artery": (None, 25.0),
    "colon": (None, 5000.0),
    "common_bile_duct": (None, 60.0),
    "duodenum": (None, 600.0),
    "femur_left": (None, 1500.0),
    "femur_right": (None, 1500.0),
    "gall_bladder": (None, 300.0),
    "kidney_left": (20.0, 500.0),
    "kidney_right": (20.0, 500.0),
    "liver": (200.0, 4500.0),
    "lung_left": (None, 5000.0),
    "lung_right": (None, 5000.0),
    "pancreas": (10.0, 250.0),
    "pancreas_body": (0.5, 150.0),
    "pancreas_head": (0.5, 150.0),
    "pancreas_tail": (0.5, 150.0),
    "pancreatic_duct": (None, 30.0),
    "postcava": (None, 400.0),
    "prostate": (None, 200.0),
    "spleen": (20.0, 1500.0),
    "stomach": (None, 3000.0),
    "superior_mesenteric_artery": (None, 60.0),
    "veins": (None, 600.0),
    "pancreatic_lesion": (None, 500.0),
}

# Phase-check thresholds on the mean HU inside the aorta (canonical phase names of backend.imaging.pants).
DEFAULT_CONTRAST_MIN_HU: dict[str, float] = {"arterial": 100.0, "venous": 100.0, "delay": 70.0}
DEFAULT_NON_CONTRAST_MAX_HU = 120.0


@dataclass(frozen=True)
class Finding:
    """One rule's finding: which rule, on which structure (or the whole case), how bad, and why."""

    rule: str
    structure: str | None
    severity: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StructureStats:
    """One structure of a version: 'present' or 'missing', voxel count and volume in mL."""

    status: str
    voxels: int
    volume_ml: float

    @property
    def present(self) -> bool:
        """True when the structure's mask is known (possibly empty)."""
        return self.status == "present"

    @property
    def empty(self) -> bool:
        """True when the mask is known and holds no voxel."""
        return self.present and self.voxels == 0


@dataclass(frozen=True)
class QAConfig:
    """Thresholds of the rules (a project's `qa` and `plausible_volume_ml` settings override the defaults)."""

    small_lesion_voxels: int = 50
    pancreas_parts_ratio: float = 1.5
    outside_parent_fraction: float = 0.01
    expected_orientation: str | None = None
    contrast_min_hu: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_CONTRAST_MIN_HU))
    non_contrast_max_hu: float = DEFAULT_NON_CONTRAST_MAX_HU
    plausible_volume_ml: Mapping[str, tuple[float | None, float | None]] = field(
        default_factory=lambda: dict(DEFAULT_PLAUSIBLE_VOLUME_ML)
    )
    disabled_rules: frozenset[str] = frozenset()


@dataclass(frozen=True)
class QAInput:
    """Everything the rules look at for one version of one scan."""

    structures: Mapping[str, StructureStats]
    parents: Mapping[str, str | None] = field(default_factory=dict)
    masks: Mapping[str, np.ndarray] = field(default_factory=dict)
    tumor: bool | None = None
    phase: str | None = None
    orientation: str | None = None
    expected_orientation: str | None = None
    aorta_mean_hu: float | None = None
    mask_values: Mapping[str, MaskValues] | None = None
    # child -> (voxels outside its parent, voxels); computed from `masks` when not given.
    outside_counts: Mapping[str, tuple[int, int]] | None = None


def tumor_flag_without_lesion(tumor: bool | None, structures: Mapping[str, StructureStats]) -> list[Finding]:
    """Tumour flagged in the metadata while the lesion mask is known and empty."""
    lesion = structures.get(LESION)
    if tumor is not True or lesion is None or not lesion.empty:
        return []
    return [
        Finding(
            "tumor_flag_without_lesion",
            LESION,
            "error",
            "the metadata flags a tumour (tumor?=1) but the pancreatic_lesion mask is empty",
            {"tumor": True, "lesion_voxels": 0},
        )
    ]


def small_lesion(lesion_mask: np.ndarray | None, min_voxels: int = 50) -> list[Finding]:
    """Lesion components (26-connected) of fewer than `min_voxels` voxels, one finding listing them."""
    if lesion_mask is None or not lesion_mask.any():
        return []
    labelled, count = ndimage.label(lesion_mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
    small = sorted(int(s) for s in sizes if s < min_voxels)
    if not small:
        return []
    return [
        Finding(
            "small_lesion",
            LESION,
            "warning",
            f"{len(small)} of {count} lesion component(s) have fewer than {min_voxels} voxels (smallest {small[0]})",
            {"components": int(count), "small_component_voxels": small[:50], "min_voxels": min_voxels},
        )
    ]


def pancreas_parts_mismatch(structures: Mapping[str, StructureStats]) -> list[Finding]:
    """Pancreas empty while head/body/tail are not, or pancreas labelled while every part is empty."""
    pancreas = structures.get(PANCREAS)
    parts = [structures.get(name) for name in PANCREAS_PARTS]
    if pancreas is None or not pancreas.present:
        return []
    known = [p for p in parts if p is not None and p.present]
    part_voxels = {name: p.voxels for name, p in zip(PANCREAS_PARTS, parts, strict=True) if p and p.present}
    if pancreas.empty and any(p.voxels > 0 for p in known):
        return [
            Finding(
                "pancreas_parts_mismatch",
                PANCREAS,
                "error",
                "the pancreas mask is empty while its head/body/tail masks are not",
                {"pancreas_voxels": 0, "part_voxels": part_voxels},
            )
        ]
    if pancreas.voxels > 0 and len(known) == len(PANCREAS_PARTS) and all(p.voxels == 0 for p in known):
        return [
            Finding(
                "pancreas_parts_mismatch",
                PANCREAS,
                "error",
                "the pancreas is labelled but its head, body and tail masks are all empty",
                {"pancreas_voxels": pancreas.voxels, "part_voxels": part_voxels},
            )
        ]
    return []


def pancreas_volume_implausible(structures: Mapping[str, StructureStats], ratio: float = 1.5) -> list[Finding]:
    """Pancreas volume far above the sum of its parts (they should add up to about the whole)."""
    pancreas = structures.get(PANCREAS)
    parts = [structures.get(name) for name in PANCREAS_PARTS]
    if pancreas is None or not pancreas.present or any(p is None or not p.present for p in parts):
        return []
    parts_ml = float(sum(p.volume_ml for p in parts if p is not None))
    if parts_ml <= 0 or pancreas.volume_ml <= ratio * parts_ml:
        return []
    return [
        Finding(
            "pancreas_volume_implausible",
            PANCREAS,
            "warning",
            f"the pancreas is {pancreas.volume_ml:.1f} mL while head, body and tail sum to {parts_ml:.1f} mL "
            f"(more than {ratio:g}x)",
            {"pancreas_ml": round(pancreas.volume_ml, 3), "parts_ml": round(parts_ml, 3), "ratio": ratio},
        )
    ]


def structure_missing(structures: Mapping[str, StructureStats]) -> list[Finding]:
    """One finding per structure recorded as missing (unknown, not empty)."""
    return [
        Finding(
            "structure_missing",
            name,
            "warning",
            f"{name} is missing from this version (no mask file was given: unknown, not empty)",
            {},
        )
        for name, stats in structures.items()
        if not stats.present
    ]


def non_binary_mask(mask_values: Mapping[str, MaskValues] | None) -> list[Finding]:
    """Mask files whose stored values were off {0, 1}; they were binarised with > 0.5 on import."""
    if not mask_values:
        return []
    return [
        Finding(
            "non_binary_mask",
            name,
            "info",
            f"{name}: {values.off_binary_voxels} voxel(s) stored values off {{0, 1}} ({values.source_dtype}, "
            f"range {values.min_value:g}..{values.max_value:g}); binarised with > 0.5",
            {
                "source_dtype": values.source_dtype,
                "off_binary_voxels": values.off_binary_voxels,
                "min": values.min_value,
                "max": values.max_value,
            },
        )
        for name, values in sorted(mask_values.items())
        if not values.is_binary
    ]


def orientation_differs(orientation: str | None, expected: str | None) -> list[Finding]:
    """The scan's axis code differs from the expected one (project majority or a configured code)."""
    if not orientation or not expected or orientation.upper() == expected.upper():
        return []
    return [
        Finding(
            "orientation_differs",
            None,
            "info",
            f"the image is stored {orientation} while the project's scans are {expected}; "
            "check exports and tools that assume one orientation",
            {"orientation": orientation, "expected": expected},
        )
    ]


def phase_mismatch(
    phase: str | None,
    aorta_mean_hu: float | None,
    contrast_min_hu: Mapping[str, float] | None = None,
    non_contrast_max_hu: float = DEFAULT_NON_CONTRAST_MAX_HU,
) -> list[Finding]:
    """The metadata's contrast phase contradicts the mean HU inside the aorta (thresholds in the module doc)."""
    if not phase or aorta_mean_hu is None:
        return []
    minimums = DEFAULT_CONTRAST_MIN_HU if contrast_min_hu is None else contrast_min_hu
    key = phase.strip().lower()
    details = {"phase": phase, "aorta_mean_hu": round(float(aorta_mean_hu), 1)}
    if key == "non-contrast" and aorta_mean_hu > non_contrast_max_hu:
        return [
            Finding(
                "phase_mismatch",
                AORTA,
                "warning",
                f"the metadata says non-contrast but the aorta averages {aorta_mean_hu:.0f} HU "
                f"(> {non_contrast_max_hu:g} HU: contrast-enhanced)",
                {**details, "max_hu": non_contrast_max_hu},
            )
        ]
    if key in minimums and aorta_mean_hu < minimums[key]:
        return [
            Finding(
                "phase_mismatch",
                AORTA,
                "warning",
                f"the metadata says {key} but the aorta averages {aorta_mean_hu:.0f} HU "
                f"(< {minimums[key]:g} HU: looks unenhanced)",
                {**details, "min_hu": minimums[key]},
            )
        ]
    return []


def outside_parent_counts(
    masks: Mapping[str, np.ndarray], parents: Mapping[str, str | None]
) -> dict[str, tuple[int, int]]:
    """Per sub-structure with both masks given: (voxels outside its parent, its voxels)."""
    out = {}
    for child, parent in parents.items():
        if parent and child in masks and parent in masks:
            child_mask = masks[child]
            out[child] = (int(np.count_nonzero(child_mask & ~masks[parent])), int(np.count_nonzero(child_mask)))
    return out


def outside_parent(
    counts: Mapping[str, tuple[int, int]],
    parents: Mapping[str, str | None],
    structures: Mapping[str, StructureStats] | None = None,
    max_fraction: float = 0.01,
) -> list[Finding]:
    """Sub-structures with more than `max_fraction` of their voxels outside their `inside` parent.

    `counts` maps a child to (voxels outside the parent, child voxels), e.g. from `outside_parent_counts`.
    """
    out = []
    for child, (outside, child_voxels) in sorted(counts.items()):
        parent = parents.get(child)
        if not parent or child_voxels == 0:
            continue
        if structures is not None and any(
            name not in structures or not structures[name].present for name in (child, parent)
        ):
            continue
        fraction = outside / child_voxels
        if outside and fraction > max_fraction:
            out.append(
                Finding(
                    "outside_parent",
                    child,
                    "warning",
                    f"{outside} of {child_voxels} {child} voxels ({fraction:.1%}) lie outside {parent}",
                    {"parent": parent, "outside_voxels": outside, "voxels": child_voxels, "fraction": fraction},
                )
            )
    return out


def volume_out_of_range(
    structures: Mapping[str, StructureStats], ranges: Mapping[str, tuple[float | None, float | None]]
) -> list[Finding]:
    """Non-empty structures whose volume (mL) is outside their plausible range."""
    out = []
    for name, stats in structures.items():
        bounds = ranges.get(name)
        if bounds is None or not stats.present or stats.voxels == 0:
            continue
        low, high = bounds
        if (low is not None and stats.volume_ml < low) or (high is not None and stats.volume_ml > high):
            shown = f"{'-' if low is None else f'{low:g}'}..{'-' if high is None else f'{high:g}'}"
            out.append(
                Finding(
                    "volume_out_of_range",
                    name,
                    "warning",
                    f"{name} is {stats.volume_ml:.1f} mL, outside the plausible range {shown} mL",
                    {"volume_ml": round(stats.volume_ml, 3), "min_ml": low, "max_ml": high},
                )
            )
    return out


def run_rules(inp: QAInput, config: QAConfig | None = None) -> list[Finding]:
    """Run every enabled rule on one version; findings in rule order."""
    cfg = config or QAConfig()
    s = inp.structures
    expected = cfg.expected_orientation or inp.expected_orientation
    results: dict[str, list[Finding]] = {
        "tumor_flag_without_lesion": tumor_flag_without_lesion(inp.tumor, s),
        "small_lesion": small_lesion(
            inp.masks.get(LESION) if s.get(LESION, StructureStats("missing", 0, 0.0)).present else None,
            cfg.small_lesion_voxels,
        ),
        "pancreas_parts_mismatch": pancreas_parts_mismatch(s),
        "pancreas_volume_implausible": pancreas_volume_implausible(s, cfg.pancreas_parts_ratio),
        "structure_missing": structure_missing(s),
        "non_binary_mask": non_binary_mask(inp.mask_values),
        "orientation_differs": orientation_differs(inp.orientation, expected),
        "phase_mismatch": phase_mismatch(inp.phase, inp.aorta_mean_hu, cfg.contrast_min_hu, cfg.non_contrast_max_hu),
        "outside_parent": outside_parent(
            outside_parent_counts(inp.masks, inp.parents) if inp.outside_counts is None else inp.outside_counts,
            inp.parents,
            s,
            cfg.outside_parent_fraction,
        ),
        "volume_out_of_range": volume_out_of_range(s, cfg.plausible_volume_ml),
    }
    return [finding for rule in RULES if rule not in cfg.disabled_rules for finding in results[rule]]


def mean_inside(volume: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean voxel value inside a mask (None for an empty mask)."""
    if not mask.any():
        return None
    return float(np.mean(volume[mask], dtype=np.float64))
