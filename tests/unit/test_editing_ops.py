"""Editor operations as pure functions: analytic volumes on anisotropic voxels, exact agreement with SciPy's
morphology on the same ellipsoid, islands, safe interpolation, fill holes, logical operations, scissors, stats."""

from __future__ import annotations

import io
import math
import typing

import nibabel as nib
import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage

from backend.core.errors import InvalidInput
from backend.editing.schemas import BoxEncoding, OperationRequest
from backend.editing.service import interpolation, islands, logical, morphology, scissors, statistics
from backend.editing.service.boxes import Box, Region, around, change, crop, tight, voxel_pad
from backend.imaging import chunks
from backend.imaging.nifti import to_nifti_gz

SPACING = (0.7, 0.9, 2.5)


def ball(shape: tuple[int, int, int], centre_mm: tuple[float, ...], radius_mm: float, spacing=SPACING) -> np.ndarray:
    """Voxels whose centre lies within radius_mm of a point (mm from voxel 0's centre)."""
    grids = np.ogrid[: shape[0], : shape[1], : shape[2]]
    squared = sum((g * s - c) ** 2 for g, s, c in zip(grids, spacing, centre_mm, strict=True))
    return np.asarray(squared <= radius_mm**2)


def sphere_ml(radius_mm: float) -> float:
    return 4.0 / 3.0 * math.pi * radius_mm**3


def volume_mm3(mask: np.ndarray, spacing=SPACING) -> float:
    return float(np.count_nonzero(mask)) * spacing[0] * spacing[1] * spacing[2]


# --- the sphere brush's element ---


@pytest.mark.parametrize("radius", [7.5, 10.0, 15.0])
def test_sphere_offsets_volume_is_the_analytic_sphere(radius: float) -> None:
    """The sphere brush on anisotropic voxels paints the analytic volume within 5 %, symmetric, centre included."""
    offsets = morphology.sphere_offsets(radius, SPACING)
    assert abs(len(offsets) * math.prod(SPACING) / sphere_ml(radius) - 1) < 0.05
    assert (offsets == 0).all(axis=1).any()
    assert {tuple(o) for o in offsets} == {tuple(-o) for o in offsets}
    assert ((offsets * np.array(SPACING)) ** 2).sum(axis=1).max() <= radius**2 + 1e-9


def test_sphere_offsets_includes_a_voxel_exactly_at_the_radius() -> None:
    """Spacing 1.5 mm, radius 3 mm: the voxel two steps away (exactly 3 mm) is inside."""
    offsets = {tuple(o) for o in morphology.sphere_offsets(3.0, (1.5, 1.5, 1.5))}
    assert (2, 0, 0) in offsets and (0, 0, -2) in offsets and (2, 1, 0) not in offsets


# --- margin ---


# Typical abdominal CT voxels (0.75 mm in-plane, 1.5 mm slices). Distances are between voxel centres (as
# Slicer's margin): against the analytic growth of the smooth shape a voxelised margin runs a few percent small
# on growth and large on shrinkage (about 1/4 voxel of the surface), less on bigger structures.
CT = (0.75, 0.75, 1.5)


def test_margin_grows_a_sphere_by_the_analytic_amount() -> None:
    """A 20 mm sphere grown by +3 mm holds the volume of a 23 mm sphere within 5 % (anisotropic voxels)."""
    shape = (68, 68, 35)
    sphere = ball(shape, (25.0, 25.0, 25.0), 20.0, CT)
    grown = morphology.margin(sphere, CT, 3.0)
    assert abs(volume_mm3(grown, CT) / sphere_ml(23.0) - 1) < 0.05
    assert (grown >= sphere).all()


def test_margin_grows_a_box_by_the_minkowski_volume() -> None:
    """A box of a×b×c mm grown by r = 3 mm (a whole number of voxels along every axis, so the faces move exactly
    r): abc + 2r(ab+bc+ca) + πr²(a+b+c) + 4/3 πr³, within 5 %."""
    mask = np.zeros((60, 56, 28), dtype=bool)
    lo, n = (10, 10, 6), (40, 36, 16)
    mask[lo[0] : lo[0] + n[0], lo[1] : lo[1] + n[1], lo[2] : lo[2] + n[2]] = True
    a, b, c = (n[i] * CT[i] for i in range(3))
    r = 3.0
    expected = a * b * c + 2 * r * (a * b + b * c + c * a) + math.pi * r * r * (a + b + c) + sphere_ml(r)
    grown = morphology.margin(mask, CT, r)
    assert abs(volume_mm3(grown, CT) / expected - 1) < 0.05


def test_margin_shrinks_a_sphere_by_the_analytic_amount() -> None:
    """A 20 mm sphere shrunk by 3 mm holds the volume of a 17 mm sphere within 5 %; shrinking is growing the
    outside (exact duality)."""
    shape = (68, 68, 35)
    sphere = ball(shape, (25.0, 25.0, 25.0), 20.0, CT)
    shrunk = morphology.margin(sphere, CT, -3.0)
    assert abs(volume_mm3(shrunk, CT) / sphere_ml(17.0) - 1) < 0.05
    assert np.array_equal(shrunk, ~morphology.margin(~sphere, CT, 3.0))


def test_margin_on_anisotropic_voxels_moves_each_face_by_whole_voxels() -> None:
    """+3 mm on (0.7, 0.9, 2.5) mm voxels moves a face by 4, 3 and 1 voxels (2.8, 2.7 and 2.5 mm ≤ 3 mm)."""
    mask = np.zeros((30, 30, 12), dtype=bool)
    mask[10:20, 10:20, 5:7] = True
    grown = morphology.margin(mask, SPACING, 3.0)
    assert grown[6, 15, 6] and not grown[5, 15, 6]
    assert grown[15, 7, 6] and not grown[15, 6, 6]
    assert grown[15, 15, 4] and not grown[15, 15, 3]


def _blobby(shape: tuple[int, int, int], seed: int = 1) -> np.ndarray:
    """A padded, irregular mask: smoothed noise thresholded, with a zero border of 8 voxels."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 2.0)
    mask = field > np.quantile(field, 0.6)
    mask[:8], mask[-8:], mask[:, :8], mask[:, -8:], mask[:, :, :4], mask[:, :, -4:] = (False,) * 6
    return mask


@pytest.mark.parametrize("path", ["rows", "distance"])
@pytest.mark.parametrize("spacing", [SPACING, (2.5, 0.7, 0.9)])
@pytest.mark.parametrize("mm", [1.0, 2.0, 3.2])
def test_morphology_equals_scipy_with_the_ellipsoid(
    mm: float, spacing: tuple[float, float, float], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dilation, erosion, opening and closing give exactly SciPy's voxels with the same ellipsoidal element, by
    bit-packed rows and by the distance transform alike, whichever axis is the finest."""
    if path == "distance":
        monkeypatch.setattr(morphology, "_MAX_ROWS", 0)
    mask = _blobby((48, 44, 24))
    element = morphology.ellipsoid(mm, spacing)
    assert np.array_equal(morphology.dilate(mask, spacing, mm), ndimage.binary_dilation(mask, element))
    assert np.array_equal(morphology.erode(mask, spacing, mm), ndimage.binary_erosion(mask, element, border_value=1))
    assert np.array_equal(morphology.opening(mask, spacing, mm), ndimage.binary_opening(mask, element))
    assert np.array_equal(morphology.closing(mask, spacing, mm), ndimage.binary_closing(mask, element))
    fortran = np.asfortranarray(mask)  # the memory order of decoded client boxes (i fastest)
    assert np.array_equal(morphology.dilate(fortran, spacing, mm), ndimage.binary_dilation(mask, element))
    assert np.array_equal(
        morphology.closing(fortran[2:, 1:], spacing, mm), morphology.closing(mask[2:, 1:], spacing, mm)
    )


def test_a_structure_at_the_volume_edge_is_not_eroded_from_the_edge() -> None:
    """Outside the volume is unknown: a mask filling the array stays whole after an erosion, by either path."""
    full = np.ones((20, 20, 10), dtype=bool)
    assert morphology.erode(full, SPACING, 2.0).all() and morphology.erode(full, SPACING, 20.0).all()
    half = np.zeros((20, 20, 10), dtype=bool)
    half[:10] = True
    eroded = morphology.erode(half, CT, 1.5)
    assert eroded[0].all() and eroded[7].all() and not eroded[8].any()


def test_median_is_the_majority_in_the_ellipsoid() -> None:
    """The binary median equals SciPy's median filter with the ellipsoid as footprint, also across slabs."""
    mask = _blobby((40, 36, 30), seed=2)
    element = morphology.ellipsoid(2.0, SPACING)
    expected = ndimage.median_filter(mask.astype(np.uint8), footprint=element, mode="nearest").astype(bool)
    assert np.array_equal(morphology.median(mask, SPACING, 2.0), expected)
    saved = morphology._MEDIAN_SLAB_VOXELS
    try:
        morphology._MEDIAN_SLAB_VOXELS = 40 * 36 * 4  # several slabs
        assert np.array_equal(morphology.median(mask, SPACING, 2.0), expected)
    finally:
        morphology._MEDIAN_SLAB_VOXELS = saved


def test_closing_fills_a_narrow_gap_and_opening_removes_a_thin_spur() -> None:
    """Two blocks 1 voxel apart are bridged by a 2 mm closing; a 1-voxel spur goes with a 2 mm opening."""
    mask = np.zeros((40, 30, 16), dtype=bool)
    mask[5:18, 5:25, 4:12] = True
    mask[19:32, 5:25, 4:12] = True
    closed = morphology.closing(mask, SPACING, 2.0)
    assert closed[18, 10:20, 6:10].all()
    spur = np.zeros_like(mask)
    spur[5:30, 5:25, 4:12] = True
    spur[30:38, 15, 8] = True
    opened = morphology.opening(spur, SPACING, 2.0)
    assert not opened[31:38].any() and opened[10:25, 10:20, 6:10].all()


# --- islands ---


def _three_islands() -> np.ndarray:
    mask = np.zeros((40, 40, 20), dtype=bool)
    mask[2:20, 2:20, 2:12] = True  # 3,240 voxels
    mask[25:30, 25:30, 5:8] = True  # 75
    mask[35, 35, 15] = True  # 1
    return mask


def test_keep_largest_leaves_one_component() -> None:
    """Keep-largest leaves exactly one component: the biggest."""
    kept, before = islands.keep_largest(_three_islands())
    assert before == 3 and islands.count_components(kept) == 1
    assert np.count_nonzero(kept) == 18 * 18 * 10


def test_connectivity_decides_what_an_island_is() -> None:
    """Two cubes touching at a corner are one island with 26-connectivity and two with 6."""
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[1:4, 1:4, 1:4] = True
    mask[4:6, 4:6, 4:6] = True
    assert islands.count_components(mask, 26) == 1
    assert islands.count_components(mask, 6) == 2
    assert np.count_nonzero(islands.keep_largest(mask, 6)[0]) == 27


def test_remove_smaller_than_a_volume() -> None:
    """Islands under the volume go, the others stay; mL converts through the voxel volume."""
    mask = _three_islands()
    assert islands.voxels_for_ml(0.05, 1.0) == 50
    cleaned, removed = islands.remove_smaller(mask, islands.voxels_for_ml(0.05, 1.0))
    assert removed == 1 and islands.count_components(cleaned) == 2 and not cleaned[35, 35, 15]
    assert np.count_nonzero(islands.remove_smaller(mask, 76)[0]) == 3240


def test_keep_clicked_island() -> None:
    """The island under the click stays; a click on background is a clear 422."""
    mask = _three_islands()
    kept, _count = islands.keep_clicked(mask, (27, 27, 6))
    assert np.count_nonzero(kept) == 75
    with pytest.raises(InvalidInput, match="not part of the structure"):
        islands.keep_clicked(mask, (0, 0, 0))


# --- interpolation ---


def _disc(shape2: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape2[0], : shape2[1]]
    return np.asarray((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2)


def test_interpolation_keeps_every_voxel_and_fills_the_gap() -> None:
    """Slices 33 and 36 drawn, pre-existing voxels in 34-35 (some outside the shape): every one is kept, the key
    slices are untouched, and the gap gets the in-between disc (the issue's pancreas case)."""
    mask = np.zeros((40, 40, 50), dtype=bool)
    mask[:, :, 33] = _disc((40, 40), (20, 20), 6)
    mask[:, :, 36] = _disc((40, 40), (20, 20), 12)
    mask[2:5, 2:5, 34] = True  # stray voxels far from the contour
    mask[18:22, 18:22, 35] = True
    before = mask.copy()
    out, gaps = interpolation.interpolate(mask, 2, [36, 33], (1.0, 1.0, 2.0))
    assert (out >= before).all()
    assert np.array_equal(out[:, :, 33], before[:, :, 33]) and np.array_equal(out[:, :, 36], before[:, :, 36])
    assert gaps.filled == [(33, 36)]
    for k, radius in ((34, 8.0), (35, 10.0)):
        area = np.count_nonzero(out[:, :, k] & ~before[:, :, k] | _disc((40, 40), (20, 20), 0.5))
        assert abs(area / (math.pi * radius**2) - 1) < 0.15
    assert np.count_nonzero(out) > np.count_nonzero(before)


def test_interpolation_of_equal_slices_is_exact_and_replace_mode_replaces() -> None:
    """Identical key shapes give that shape in every gap slice; replace mode clears what was there."""
    shape = np.zeros((30, 30), dtype=bool)
    shape[5:20, 8:25] = True
    mask = np.zeros((12, 30, 30), dtype=bool)
    mask[2], mask[7] = shape, shape
    mask[4, 28, 28] = True
    out, _ = interpolation.interpolate(mask, 0, [2, 7], (2.5, 0.8, 0.8))
    for k in range(3, 7):
        assert np.array_equal(out[k] & ~mask[k], shape & ~mask[k]) and (out[k] >= shape).all()
    assert out[4, 28, 28]
    replaced, _ = interpolation.interpolate(mask, 0, [2, 7], (2.5, 0.8, 0.8), replace=True)
    assert not replaced[4, 28, 28] and np.array_equal(replaced[4], shape)


def test_interpolation_skips_a_gap_with_an_empty_key_slice() -> None:
    """A key slice without the structure (or outside the array) leaves its gaps alone."""
    mask = np.zeros((10, 10, 20), dtype=bool)
    mask[2:6, 2:6, 5] = True
    out, gaps = interpolation.interpolate(mask, 2, [5, 9, 40], (1.0, 1.0, 1.0))
    assert np.array_equal(out, mask)
    assert gaps.filled == [] and gaps.skipped_empty == [(5, 9), (9, 40)]


def test_interpolation_uses_the_slice_offset() -> None:
    """Keys are volume indices; the array may start at another slice (its box)."""
    mask = np.zeros((3, 10, 10), dtype=bool)
    mask[0, 2:8, 2:8] = mask[2, 2:8, 2:8] = True
    out, gaps = interpolation.interpolate(mask, 0, [100, 102], (1.0, 1.0, 1.0), offset=100)
    assert gaps.filled == [(100, 102)] and out[1, 2:8, 2:8].all()


# --- fill holes ---


def test_fill_holes_fills_a_hollow_sphere() -> None:
    """A shell's cavity is filled; the outside stays empty."""
    solid = ball((40, 34, 16), (14.0, 15.0, 20.0), 10.0)
    shell = solid & ~ball((40, 34, 16), (14.0, 15.0, 20.0), 6.0)
    filled = morphology.fill_holes(shell)
    assert np.array_equal(filled, solid)


def test_fill_holes_per_slice_fills_an_open_tube() -> None:
    """A tube open at both ends has no 3D cavity, but each slice across it has a hole."""
    tube = np.zeros((20, 20, 10), dtype=bool)
    tube[4:16, 4:16, :] = True
    tube[7:13, 7:13, :] = False
    assert np.array_equal(morphology.fill_holes(tube), tube)
    per_slice = morphology.fill_holes(tube, per_slice_axis=2)
    assert per_slice[4:16, 4:16, :].all() and np.count_nonzero(per_slice) == 12 * 12 * 10


# --- logical operations and scissors ---


def test_logical_operations() -> None:
    """copy, add, subtract, intersect; invert in the volume and inside another structure."""
    a = np.zeros((6, 6, 6), dtype=bool)
    b = np.zeros_like(a)
    a[:3], b[2:5] = True, True
    assert np.array_equal(logical.combine("copy", a, b), b)
    assert np.array_equal(logical.combine("add", a, b), a | b)
    assert np.array_equal(logical.combine("subtract", a, b), a & ~b)
    assert np.array_equal(logical.combine("intersect", a, b), a & b)
    assert np.array_equal(logical.invert(a), ~a)
    inverted = logical.invert(a, within=b)
    assert np.array_equal(inverted[2:5], ~a[2:5]) and np.array_equal(inverted[:2], a[:2])


def test_scissors_keep_inside_through_the_volume_and_in_a_slab() -> None:
    """A square polygon on an axial slice (x, y) = (i, j): keep inside erases the rest, in all slices or a slab."""
    mask = np.ones((20, 20, 10), dtype=bool)
    square = [[5, 5], [5, 14], [14, 14], [14, 5]]
    kept = scissors.cut(mask, (0, 0, 0), square, 2, None, keep_inside=True)
    assert kept[5:15, 5:15].all() and np.count_nonzero(kept) == 10 * 10 * 10
    slab = scissors.cut(mask, (0, 0, 0), square, 2, (3, 4), keep_inside=False)
    assert not slab[5:15, 5:15, 3:5].any() and slab[5:15, 5:15, :3].all() and slab[:, :, 5:].all()
    assert np.count_nonzero(slab) == 4000 - 2 * 100


def test_scissors_coordinates_follow_the_axis_and_the_box_origin() -> None:
    """Axis 0: (x, y) = (j, k); the mask's box origin shifts the polygon into the box."""
    mask = np.ones((4, 10, 10), dtype=bool)
    triangle = [[100, 200], [100, 209], [109, 200]]  # volume coordinates (j, k)
    cut = scissors.cut(mask, (50, 100, 200), triangle, 0, None, keep_inside=False)
    assert not cut[:, 0, 0].any() and cut[:, 9, 9].all()
    assert np.array_equal(cut[0], cut[3])


# --- boxes and statistics ---


def test_change_box_covers_exactly_the_changed_voxels() -> None:
    """The result box is the bounding box of the changed voxels and carries the new voxels; no change: empty."""
    region = Region((10, 20, 30), (8, 8, 8))
    old = np.zeros((8, 8, 8), dtype=bool)
    old[1:3, 1:3, 1:3] = True
    new = old.copy()
    new[5, 6, 4] = True
    new[1, 1, 1] = False
    done = change(old, new, region)
    assert done.origin == (11, 21, 31) and done.box.shape == (5, 6, 4)
    assert (done.added, done.removed) == (1, 1) and done.box[4, 5, 3] and not done.box[0, 0, 0]
    assert change(old, old, region).box.size == 0


def test_crop_tight_and_padded_regions() -> None:
    """A box is trimmed to its content, padded by mm on anisotropic spacing and clipped to the volume."""
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[1, 2, 3] = True
    box = tight(Box((10, 10, 10), mask))
    assert box.origin == (11, 12, 13) and box.size == (1, 1, 1)
    pad = voxel_pad(3.0, (0.7, 1.5, 2.5))
    assert pad == (6, 3, 3)
    region = around([box], pad, (14, 100, 100))
    assert region is not None and region.origin == (5, 9, 10) and region.stop == (14, 16, 17)
    assert crop(box, region)[6, 3, 3] and np.count_nonzero(crop(box, region)) == 1


@pytest.mark.parametrize("gz", [True, False])
def test_statistics_read_only_a_box_of_the_stored_volume(gz: bool) -> None:
    """HU under a mask from a scaled int16 NIfTI: the box read equals the same box of the whole volume."""
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 3000, size=(30, 26, 22)).astype(np.int16)
    image = nib.Nifti1Image(raw, np.diag([0.7, 0.9, 2.5, 1.0]))
    image.header.set_slope_inter(0.5, -1024.0)
    hu = raw * 0.5 - 1024.0
    data = image.to_bytes()
    if gz:
        data = to_nifti_gz(hu.astype(np.float32), np.diag([0.7, 0.9, 2.5, 1.0]))
    region = Region((3, 4, 5), (20, 15, 12))
    values = statistics.read_region(io.BytesIO(data), "ct.nii.gz", region)
    assert np.allclose(values, hu[3:23, 4:19, 5:17])
    mask = np.zeros(region.size, dtype=bool)
    mask[2:9, 3:7, 1:10] = True
    measured = statistics.measure(mask, values, 0.7 * 0.9 * 2.5)
    under = hu[3:23, 4:19, 5:17][mask]
    assert measured.voxels == under.size and math.isclose(measured.volume_ml, under.size * 1.575 / 1000)
    assert math.isclose(measured.hu_mean or 0, under.mean(), rel_tol=1e-5)
    assert math.isclose(measured.hu_sd or 0, under.std(), rel_tol=1e-4)
    assert (measured.hu_min, measured.hu_max) == (under.min(), under.max())
    assert statistics.measure(np.zeros_like(mask), values, 1.0).hu_mean is None


# --- the request schema ---


def _margin(**params: object) -> dict[str, object]:
    return {"operation": "margin", "structure": "liver", "params": params, "inputs": []}


def test_request_schema_refuses_bad_operations_and_parameters() -> None:
    """Unknown operations, unknown or missing parameters and small polygons are validation errors."""
    assert OperationRequest.model_validate(_margin(mm=3)).root.params.mm == 3
    for bad in (
        {**_margin(mm=3), "operation": "explode"},
        _margin(mm=3, extra=1),
        _margin(),
        _margin(mm=500),
        {
            "operation": "scissors",
            "structure": "a",
            "inputs": [],
            "params": {"polygon": [[0, 0], [1, 1]], "axis": 2, "keep": "inside"},
        },
        {"operation": "islands", "structure": "a", "inputs": [], "params": {"mode": "keep_clicked"}},
        {"operation": "logical", "structure": "a", "inputs": [], "params": {"op": "add"}},
        {"operation": "interpolate", "structure": "a", "inputs": [], "params": {"axis": 3, "key_slices": [1, 4]}},
        {**_margin(mm=1), "inputs": [{"structure": "liver", "origin": [0, 0, 0], "size": [2, 2, 2]}]},
        {**_margin(mm=1), "inputs": [{"structure": "liver", "origin": [0, 0, 0], "size": [2, 0, 2], "part": "p"}]},
    ):
        with pytest.raises(ValidationError):
            OperationRequest.model_validate(bad)


def test_box_encodings_are_the_patch_saves() -> None:
    """The request's encodings are exactly those the patch save decodes."""
    assert set(typing.get_args(BoxEncoding)) == set(chunks.BOX_ENCODINGS)
