"""Tests for backend.imaging.qa_rules: each rule fires on a phantom built to show its defect, not on a clean one."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache

import numpy as np
import pytest

from backend.imaging import qa_rules
from backend.imaging.nifti import Geometry, load_mask_with_values, orientation_code, to_nifti_gz
from backend.imaging.phantom import Phantom, generate_phantom
from backend.projects.service import DEFAULT_SCHEMA_PATH

# 96x96x48 voxels covering the phantom's template field of view: organ volumes come out in adult ranges.
SHAPE = (96, 96, 48)
SPACING = (360 / 96, 360 / 96, 260 / 48)
VOXEL_ML = SPACING[0] * SPACING[1] * SPACING[2] / 1000.0


@cache
def _phantom(orientation: str = "RAS") -> Phantom:
    shape = SHAPE if orientation == "RAS" else (SHAPE[1], SHAPE[0], SHAPE[2])
    spacing = SPACING if orientation == "RAS" else (SPACING[1], SPACING[0], SPACING[2])
    return generate_phantom(shape, spacing, seed=3, lesion=True, orientation=orientation)


@cache
def _parents() -> dict[str, str | None]:
    schema = json.loads(DEFAULT_SCHEMA_PATH.read_text())
    return {s["name"]: s.get("inside") for s in schema["structures"]}


def _masks() -> dict[str, np.ndarray]:
    return {name: mask.copy() for name, mask in _phantom().masks.items()}


def _input(
    masks: Mapping[str, np.ndarray],
    *,
    missing: tuple[str, ...] = (),
    tumor: bool | None = True,
    phase: str | None = "venous",
    volume: np.ndarray | None = None,
    orientation: str = "RAS",
    expected: str | None = "RAS",
) -> qa_rules.QAInput:
    stats = {
        name: qa_rules.StructureStats("present", int(m.sum()), float(m.sum()) * VOXEL_ML) for name, m in masks.items()
    }
    for name in missing:
        stats[name] = qa_rules.StructureStats("missing", 0, 0.0)
    volume = _phantom().volume if volume is None else volume
    parents = {k: v for k, v in _parents().items() if k in stats and v}
    return qa_rules.QAInput(
        structures=stats,
        parents=parents,
        masks={k: v for k, v in masks.items() if k not in missing},
        tumor=tumor,
        phase=phase,
        orientation=orientation,
        expected_orientation=expected,
        aorta_mean_hu=qa_rules.mean_inside(volume, masks["aorta"]),
    )


def _rules(findings: list[qa_rules.Finding]) -> list[tuple[str, str | None]]:
    return [(f.rule, f.structure) for f in findings]


def test_clean_phantom_raises_nothing() -> None:
    inp = _input(_masks())
    assert inp.structures["pancreatic_lesion"].voxels >= 50  # a lesion big enough not to count as small
    assert qa_rules.run_rules(inp) == []


def test_tumor_flag_without_lesion() -> None:
    masks = _masks()
    masks["pancreatic_lesion"][:] = False
    assert _rules(qa_rules.run_rules(_input(masks))) == [("tumor_flag_without_lesion", "pancreatic_lesion")]
    # No tumour in the metadata: an empty lesion mask is right.
    assert qa_rules.run_rules(_input(masks, tumor=False)) == []


def test_small_lesion_component() -> None:
    masks = _masks()
    # A second, 3x3x1 = 9-voxel lesion far from the first (still inside the pancreas, to isolate the rule).
    pancreas = np.argwhere(masks["pancreas"] & ~masks["pancreatic_lesion"])
    lesion_centre = np.argwhere(masks["pancreatic_lesion"]).mean(axis=0)
    far = pancreas[np.argmax(((pancreas - lesion_centre) ** 2).sum(axis=1))]
    blob = np.zeros_like(masks["pancreas"])
    i, j, k = (int(v) for v in far)
    blob[i - 1 : i + 2, j - 1 : j + 2, k] = True
    masks["pancreatic_lesion"] |= blob & masks["pancreas"]
    small = int((blob & masks["pancreas"]).sum())
    findings = qa_rules.run_rules(_input(masks))
    assert _rules(findings) == [("small_lesion", "pancreatic_lesion")]
    assert findings[0].details["components"] == 2
    assert findings[0].details["small_component_voxels"] == [small]


def test_pancreas_empty_while_parts_are_not_and_the_reverse() -> None:
    masks = _masks()
    masks["pancreas"][:] = False
    findings = qa_rules.run_rules(_input(masks))
    assert ("pancreas_parts_mismatch", "pancreas") in _rules(findings)
    masks = _masks()
    for part in qa_rules.PANCREAS_PARTS:
        masks[part][:] = False
    assert _rules(qa_rules.run_rules(_input(masks))) == [("pancreas_parts_mismatch", "pancreas")]


def test_pancreas_volume_far_above_its_parts() -> None:
    masks = _masks()
    # A pancreas mask that swallowed a block of neighbouring tissue: 3x the parts' volume.
    parts = sum(int(masks[p].sum()) for p in qa_rules.PANCREAS_PARTS)
    lo = np.argwhere(masks["pancreas"]).min(axis=0)
    extra = np.zeros_like(masks["pancreas"])
    extra[lo[0] : lo[0] + 20, lo[1] : lo[1] + 20, lo[2] : lo[2] + 10] = True
    masks["pancreas"] |= extra
    assert masks["pancreas"].sum() > 1.5 * parts
    findings = qa_rules.run_rules(_input(masks))
    assert ("pancreas_volume_implausible", "pancreas") in _rules(findings)
    detail = next(f for f in findings if f.rule == "pancreas_volume_implausible").details
    assert detail["parts_ml"] == pytest.approx(parts * VOXEL_ML, abs=1e-3)


def test_structure_missing() -> None:
    findings = qa_rules.run_rules(_input(_masks(), missing=("gall_bladder", "spleen")))
    assert _rules(findings) == [("structure_missing", "gall_bladder"), ("structure_missing", "spleen")]


def test_non_binary_float_mask_from_a_real_nifti() -> None:
    ph = _phantom()
    geometry = Geometry.from_affine(ph.volume.shape, ph.affine)
    floaty = to_nifti_gz(ph.masks["liver"].astype(np.float32) * np.float32(0.9999), ph.affine)
    mask, values = load_mask_with_values(floaty, geometry, "liver.nii.gz")
    np.testing.assert_array_equal(mask, ph.masks["liver"])  # binarised with > 0.5
    assert values.source_dtype == "float32" and values.off_binary_voxels == int(ph.masks["liver"].sum())
    _, clean = load_mask_with_values(to_nifti_gz(ph.masks["spleen"].astype(np.uint8), ph.affine), geometry, "s")
    assert clean.is_binary
    findings = qa_rules.non_binary_mask({"liver": values, "spleen": clean})
    assert _rules(findings) == [("non_binary_mask", "liver")]
    assert findings[0].severity == "info" and findings[0].details["max"] == pytest.approx(0.9999)
    inp = _input(_masks())
    with_values = qa_rules.QAInput(**{**inp.__dict__, "mask_values": {"liver": values}})
    assert _rules(qa_rules.run_rules(with_values)) == [("non_binary_mask", "liver")]


def test_orientation_differs_from_the_project() -> None:
    lps = _phantom("LPS")
    code = orientation_code(lps.affine)
    assert code == "LPS"
    assert _rules(qa_rules.orientation_differs(code, "RAS")) == [("orientation_differs", None)]
    assert qa_rules.orientation_differs("RAS", "RAS") == []
    findings = qa_rules.run_rules(_input(_masks(), orientation=code, expected="RAS"))
    assert _rules(findings) == [("orientation_differs", None)] and findings[0].severity == "info"


def test_phase_mismatch_both_ways() -> None:
    masks = _masks()
    # The phantom's aorta is enhanced (~150 HU): fine for venous, wrong for non-contrast.
    assert _rules(qa_rules.run_rules(_input(masks, phase="non-contrast"))) == [("phase_mismatch", "aorta")]
    unenhanced = _phantom().volume.copy()
    unenhanced[masks["aorta"]] = 40
    assert qa_rules.run_rules(_input(masks, phase="non-contrast", volume=unenhanced)) == []
    findings = qa_rules.run_rules(_input(masks, phase="arterial", volume=unenhanced))
    assert _rules(findings) == [("phase_mismatch", "aorta")]
    assert findings[0].details["aorta_mean_hu"] == pytest.approx(40.0)
    assert qa_rules.run_rules(_input(masks, phase=None, volume=unenhanced)) == []


def test_outside_parent() -> None:
    masks = _masks()
    # The head drawn 6 voxels off: most of it now lies outside the pancreas.
    masks["pancreas_head"] = np.roll(masks["pancreas_head"], 6, axis=1)
    findings = qa_rules.run_rules(_input(masks))
    outside = [f for f in findings if f.rule == "outside_parent"]
    assert [f.structure for f in outside] == ["pancreas_head"]
    assert outside[0].details["parent"] == "pancreas" and outside[0].details["fraction"] > 0.5


def test_volume_out_of_range_default_and_configured() -> None:
    masks = _masks()
    masks["spleen"][10:60, 10:60, 5:40] = True  # ~6700 mL of "spleen"
    findings = qa_rules.run_rules(_input(masks))
    assert ("volume_out_of_range", "spleen") in _rules(findings)
    config = qa_rules.QAConfig(plausible_volume_ml={"liver": (None, 1000.0)})
    findings = qa_rules.run_rules(_input(_masks()), config)
    assert _rules(findings) == [("volume_out_of_range", "liver")]
    assert findings[0].details["max_ml"] == 1000.0


def test_disabled_rules_are_skipped() -> None:
    inp = _input(_masks(), missing=("gall_bladder",))
    assert qa_rules.run_rules(inp, qa_rules.QAConfig(disabled_rules=frozenset({"structure_missing"}))) == []
