"""The AbdomenAtlas/PanTS attention recipe on hand-built probability volumes with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from worker.models.attention import (
    AttentionThresholds,
    attention_maps,
    clean_mask,
    default_forbidden_overlaps,
    priority_score,
)
from worker.models.inference import binary_entropy

SHAPE = (24, 24, 24)
PARENTS = {
    "pancreas_head": "pancreas",
    "pancreas_body": "pancreas",
    "pancreas_tail": "pancreas",
    "pancreatic_lesion": "pancreas",
}


def _cube(lo: int, size: int) -> tuple[slice, slice, slice]:
    return (slice(lo, lo + size),) * 3


def _l1_ball_around_box(lo: int, size: int, radius: int) -> np.ndarray:
    """Voxels within L1 distance ``radius`` of the box [lo, lo + size)^3 (independent reference)."""
    idx = np.indices(SHAPE)
    d = np.maximum(np.maximum(lo - idx, idx - (lo + size - 1)), 0).sum(axis=0)
    return np.asarray(d <= radius)


def test_opening_of_a_cube_by_hand() -> None:
    # Erosion x2 with the 6-connected cross = erosion by the L1 ball of radius 2: a 6^3 cube [5, 10] keeps only
    # the voxels whose every coordinate is in [7, 8], a 2^3 core. Dilation x2 grows the core back by the same ball:
    # the voxels within L1 distance 2 of the core. Per axis the distance is 0 for 2 values, 1 for 2 and 2 for 2;
    # the (d1, d2, d3) with d1 + d2 + d3 <= 2 are 10 patterns, each worth 2^3 voxels: 80 (not 216: corners and
    # edges of the cube are trimmed).
    m = np.zeros(SHAPE, dtype=bool)
    m[_cube(5, 6)] = True
    cleaned = clean_mask(m, 2, 2)
    assert int(cleaned.sum()) == 80
    assert np.array_equal(cleaned, _l1_ball_around_box(7, 2, 2))
    assert np.array_equal(clean_mask(m, 2, 0), _l1_ball_around_box(7, 2, 0))


def test_inconsistency_cube_and_speck_removed() -> None:
    a = np.zeros(SHAPE, dtype=np.float32)
    b = np.zeros(SHAPE, dtype=np.float32)
    a[_cube(5, 6)] = 0.9
    b[_cube(5, 6)] = 0.1
    a[_cube(17, 2)] = 0.9  # a 2^3 speck of disagreement: gone after the first erosion
    b[_cube(17, 2)] = 0.1
    res = attention_maps({"liver": [a, b]}, ["liver"], [], AttentionThresholds())["liver"]
    # std of (0.9, 0.1) = 0.4 > 0.1 and the mean 0.5 has entropy 1 > 0.05: both maps are the opened cube
    assert res.inconsistency_voxels == 80
    assert res.uncertainty_voxels == 80
    assert res.overlap_voxels == 0
    assert res.attention_voxels == 80
    assert np.array_equal(res.mask, _l1_ball_around_box(7, 2, 2))
    assert res.mask.dtype == bool


def test_inconsistency_only_counts_std_above_threshold() -> None:
    a = np.zeros(SHAPE, dtype=np.float32)
    b = np.zeros(SHAPE, dtype=np.float32)
    a[_cube(4, 8)] = 1.0
    b[_cube(4, 8)] = 0.85  # std 0.075 < 0.1, mean 0.925 -> entropy 0.384 > 0.05
    res = attention_maps({"s": [a, b]}, ["s"], [])["s"]
    assert res.inconsistency_voxels == 0
    # 8^3 cube -> 4^3 core; per axis the distance to the core is 0 for 4 values, 1 for 2, 2 for 2, so the voxels
    # within L1 distance 2 are 4^3 + 3 * (2 * 4^2) [one axis at 1] + 3 * (2 * 4^2) [one at 2] + 3 * (2 * 2 * 4)
    # [two at 1] = 64 + 96 + 96 + 48 = 304
    expected = int(_l1_ball_around_box(6, 4, 2).sum())
    assert expected == 304
    assert res.uncertainty_voxels == expected


@pytest.mark.parametrize(("p", "flagged"), [(0.01, True), (0.003, False), (0.5, True), (1.0, False)])
def test_entropy_threshold(p: float, flagged: bool) -> None:
    # binary entropy in bits: H(0.01) = 0.0808 > 0.05, H(0.003) = 0.0295 < 0.05
    assert (float(binary_entropy(np.float32(p))) > 0.05) is flagged
    m = np.zeros(SHAPE, dtype=np.float32)
    m[_cube(4, 8)] = p
    res = attention_maps({"s": [m, m.copy()]}, ["s"], [])["s"]
    assert res.inconsistency_voxels == 0
    assert res.uncertainty_voxels == (304 if flagged else 0)


def test_overlap_of_forbidden_pairs_only() -> None:
    liver = np.zeros(SHAPE, dtype=np.float32)
    spleen = np.zeros(SHAPE, dtype=np.float32)
    pancreas = np.zeros(SHAPE, dtype=np.float32)
    head = np.zeros(SHAPE, dtype=np.float32)
    liver[2:14, 2:14, 2:14] = 1.0
    spleen[6:18, 6:18, 6:18] = 1.0  # shares the 8^3 box [6, 14)^3 with the liver
    pancreas[16:24, 0:6, 0:24] = 1.0  # touches neither the liver nor the spleen
    head[16:24, 0:6, 0:12] = 1.0  # inside the pancreas: allowed
    names = ["liver", "spleen", "pancreas", "pancreas_head"]
    pairs = default_forbidden_overlaps(names, PARENTS)
    probs = {"liver": [liver] * 2, "spleen": [spleen] * 2, "pancreas": [pancreas] * 2, "pancreas_head": [head] * 2}
    res = attention_maps(probs, names, pairs)
    assert res["liver"].overlap_voxels == 304
    assert res["spleen"].overlap_voxels == 304
    assert np.array_equal(res["liver"].mask, _l1_ball_around_box(8, 4, 2))
    assert res["pancreas"].overlap_voxels == 0
    assert res["pancreas_head"].overlap_voxels == 0
    for r in res.values():  # probabilities 0/1 agree: no inconsistency, no uncertainty
        assert r.inconsistency_voxels == 0 and r.uncertainty_voxels == 0


def test_default_forbidden_overlaps() -> None:
    names = ["liver", "spleen", "pancreas", "pancreas_head", "pancreas_body", "pancreatic_lesion", "veins"]
    pairs = set(default_forbidden_overlaps(names, PARENTS))
    assert ("liver", "spleen") in pairs
    assert ("pancreas_head", "pancreas_body") in pairs  # parts partition the pancreas
    assert ("liver", "pancreatic_lesion") in pairs
    assert ("pancreas", "pancreas_head") not in pairs
    assert ("pancreas", "pancreatic_lesion") not in pairs
    assert ("pancreas_head", "pancreatic_lesion") not in pairs  # the lesion lies inside a part
    assert not any("veins" in p for p in pairs)
    assert len(pairs) == len(default_forbidden_overlaps(names, PARENTS))  # each pair once
    # without the parent relation the pancreas and its head must not overlap
    assert ("pancreas", "pancreas_head") in set(default_forbidden_overlaps(names))


def test_priority_score_normalises_by_slices() -> None:
    assert priority_score(300, 100) == 3.0
    assert priority_score(300, 200) == pytest.approx(priority_score(300, 100) / 2)
    assert priority_score(0, 10) == 0.0
    with pytest.raises(ValueError):
        priority_score(10, 0)


def test_needs_two_models_of_one_shape() -> None:
    m = np.zeros(SHAPE, dtype=np.float32)
    with pytest.raises(ValueError):
        attention_maps({"s": [m]}, ["s"], [])
    with pytest.raises(ValueError):
        attention_maps({"s": [m, np.zeros((4, 4, 4), dtype=np.float32)]}, ["s"], [])
