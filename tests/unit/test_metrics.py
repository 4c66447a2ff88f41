"""DSC, area-weighted NSD and HD95 (Nikolov et al.) on hand-computed cases, the DESIGN.md sphere, empty masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from backend.evaluation import metrics
from backend.evaluation.surface_tables import neighbour_code_to_surface_area


def _cube(shape: tuple[int, int, int], lo: tuple[int, int, int], side: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[lo[0] : lo[0] + side, lo[1] : lo[1] + side, lo[2] : lo[2] + side] = True
    return mask


def _ball(n: int, radius: float) -> np.ndarray:
    c = (n - 1) / 2
    z, y, x = np.ogrid[:n, :n, :n]
    return np.asarray((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2 <= radius * radius)


def test_identical_masks_score_perfectly() -> None:
    mask = _cube((20, 20, 20), (5, 5, 5), 8)
    scores = metrics.evaluate_pair(mask, mask, (0.8, 0.8, 2.5))
    assert scores.dsc == 1.0 and scores.nsd == 1.0 and scores.hd95 == 0.0
    assert scores.volume_error_ml == 0.0 and scores.volume_error_rel == 0.0
    assert scores.surface_status == "ok"


def test_cube_shifted_by_one_voxel() -> None:
    gt = _cube((20, 20, 20), (4, 5, 5), 10)
    pred = _cube((20, 20, 20), (5, 5, 5), 10)
    scores = metrics.evaluate_pair(gt, pred, (1.0, 1.0, 1.0))
    # 9 of 10 slabs overlap: 2 * 900 / (1000 + 1000).
    assert scores.dsc == pytest.approx(0.9, abs=1e-12)
    # The two end faces (a sixth of the surface, more than 5 %) lie one voxel from the other surface.
    assert scores.hd95 == pytest.approx(1.0, abs=1e-12)
    assert scores.nsd == pytest.approx(1.0)  # every surfel is within the 1 mm tolerance
    strict = metrics.evaluate_pair(gt, pred, (1.0, 1.0, 1.0), nsd_tolerance_mm=0.5)
    assert strict.nsd is not None and 0.6 < strict.nsd < 0.95
    assert scores.volume_error_ml == 0.0


def test_anisotropic_shift_along_the_coarse_axis_is_that_spacing() -> None:
    gt = _cube((20, 20, 20), (5, 5, 4), 10)
    pred = _cube((20, 20, 20), (5, 5, 5), 10)
    scores = metrics.evaluate_pair(gt, pred, (0.7, 0.7, 3.0))
    assert scores.dsc == pytest.approx(0.9, abs=1e-12)
    assert scores.hd95 == pytest.approx(3.0, abs=1e-12)
    # The same shift along a fine axis is 0.7 mm.
    across = metrics.evaluate_pair(np.swapaxes(gt, 0, 2), np.swapaxes(pred, 0, 2), (0.7, 0.7, 3.0))
    assert across.hd95 == pytest.approx(0.7, abs=1e-12)
    # At a 1 mm tolerance the 3 mm end faces fail, the 0.7 mm ones pass.
    assert scores.nsd is not None and scores.nsd < 0.95
    assert across.nsd == pytest.approx(1.0)


def test_surfels_are_weighted_by_area_in_mm2() -> None:
    # A single voxel: its marching-cubes surface area per spacing comes from the lookup table.
    table = neighbour_code_to_surface_area((1.0, 1.0, 1.0))
    assert table[0] == 0 and table[255] == 0
    assert table[1] == pytest.approx(np.sqrt(3) / 8)  # one corner cut off: a triangle of area √3/8
    scaled = neighbour_code_to_surface_area((2.0, 2.0, 2.0))
    assert scaled[1] == pytest.approx(4 * table[1])
    voxel = _cube((5, 5, 5), (2, 2, 2), 1)
    sd = metrics.surface_distances(voxel, voxel, (1.0, 1.0, 1.0))
    assert sd.areas_gt.sum() == pytest.approx(8 * np.sqrt(3) / 8)  # an octahedron of 8 corner triangles


def test_sphere_eroded_by_two_voxels_matches_the_design_value() -> None:
    """DESIGN.md §11: area-weighted NSD@1 mm ≈ 0.357 (MONAI's boundary-voxel NSD gives 0.000)."""
    ball = _ball(41, 17.5)
    eroded = ndimage.distance_transform_edt(ball) > 2.0  # erosion by two voxels (Euclidean)
    nsd = metrics.evaluate_pair(ball, eroded, (1.0, 1.0, 1.0)).nsd
    assert nsd == pytest.approx(0.357, abs=5e-4)
    # SciPy's default (6-connected) binary erosion, twice, of a radius-8.5 ball lands close as well.
    small = _ball(23, 8.5)
    nsd_cross = metrics.evaluate_pair(small, ndimage.binary_erosion(small, iterations=2), (1.0, 1.0, 1.0)).nsd
    assert nsd_cross == pytest.approx(0.3561, abs=5e-4)


def test_monai_boundary_voxel_nsd_disagrees_on_the_same_sphere() -> None:
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    ball = _ball(41, 17.5)
    eroded = ndimage.distance_transform_edt(ball) > 2.0

    def t(a: np.ndarray) -> object:
        return torch.from_numpy(a[None, None].astype(np.float32))

    monai_nsd = float(monai_metrics.compute_surface_dice(t(eroded), t(ball), class_thresholds=[1.0]))
    assert monai_nsd == pytest.approx(0.0, abs=1e-6)
    # The "monai" definition reproduces that number; the default is the area-weighted one.
    ours = metrics.evaluate_pair(ball, eroded, (1.0, 1.0, 1.0), definition="monai").nsd
    assert ours == pytest.approx(monai_nsd, abs=1e-6)
    assert metrics.METRIC_DEFINITIONS["deepmind"] == metrics.NSD_DEFINITION


def test_empty_masks_follow_the_stated_policy() -> None:
    empty = np.zeros((10, 10, 10), dtype=bool)
    cube = _cube((10, 10, 10), (2, 2, 2), 4)
    both = metrics.evaluate_pair(empty, empty, (1.0, 1.0, 1.0))
    assert both.dsc == 1.0 and both.nsd is None and both.hd95 is None
    assert both.surface_status == "both_empty" and both.gt_empty and both.pred_empty
    assert both.volume_error_rel is None
    missed = metrics.evaluate_pair(cube, empty, (1.0, 1.0, 2.0))
    assert missed.dsc == 0.0 and missed.nsd is None and missed.hd95 is None
    assert missed.surface_status == "pred_empty"
    assert missed.volume_error_ml == pytest.approx(-64 * 2.0 / 1000) and missed.volume_error_rel == -1.0
    invented = metrics.evaluate_pair(empty, cube, (1.0, 1.0, 1.0))
    assert invented.dsc == 0.0 and invented.nsd is None and invented.surface_status == "gt_empty"
    assert invented.volume_error_rel is None
    assert metrics.undefined(None) == "undefined" and metrics.undefined(0.5) == 0.5
    assert metrics.dice(empty, empty) == 1.0 and metrics.dice(cube, empty) == 0.0


def test_cropping_does_not_change_the_numbers() -> None:
    rng = np.random.default_rng(3)
    gt = ndimage.binary_dilation(rng.random((30, 30, 30)) > 0.997, iterations=3)
    pred = ndimage.binary_dilation(gt, iterations=1) & (rng.random(gt.shape) > 0.05)
    big_gt = np.zeros((80, 90, 70), dtype=bool)
    big_pred = np.zeros_like(big_gt)
    big_gt[25:55, 40:70, 10:40] = gt
    big_pred[25:55, 40:70, 10:40] = pred
    small = metrics.evaluate_pair(gt, pred, (0.8, 1.1, 2.0), nsd_tolerance_mm=1.5)
    big = metrics.evaluate_pair(big_gt, big_pred, (0.8, 1.1, 2.0), nsd_tolerance_mm=1.5)
    assert small == big


def test_per_structure_tolerance_and_bad_input() -> None:
    assert metrics.tolerance_for("liver", None) == 1.0
    assert metrics.tolerance_for("liver", 2.0) == 2.0
    assert metrics.tolerance_for("pancreas", {"pancreas": 3.0, "default": 1.5}) == 3.0
    assert metrics.tolerance_for("liver", {"pancreas": 3.0, "default": 1.5}) == 1.5
    mask = np.zeros((4, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match="shape"):
        metrics.evaluate_pair(mask, np.zeros((4, 4, 5), dtype=bool), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        metrics.evaluate_pair(mask, mask, (1.0, 0.0, 1.0))
