"""Editor operations run on the structure's box (plus what the operation can reach), never on the whole volume:
the result written back into the volume must be exactly the whole-volume operation's, also where the structure
touches the volume's border and where a margin reaches past the structure's box. Island sizes counted by runs
equal a plain count of every label."""

from __future__ import annotations

from typing import Any, Literal

import cc3d
import numpy as np
import pytest
from scipy import ndimage

from backend.editing.schemas import OperationRequest
from backend.editing.service import islands, morphology
from backend.editing.service.boxes import Box, tight
from backend.editing.service.operations import Work, compute

SHAPE = (44, 40, 24)
SPACING = (0.8, 0.8, 1.5)
NAME = "liver"


def _organ(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """An irregular organ-like mask with dents, a cavity and small islands (no two islands of equal size)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 2.5)
    mask = np.asarray(field > np.quantile(field, 0.55))
    mask &= ndimage.binary_opening(mask, iterations=1)
    largest, _ = islands.keep_largest(mask, 26)
    mask = largest.copy()
    core = np.argwhere(ndimage.binary_erosion(mask, iterations=2))
    i, j, k = core[len(core) // 2]
    mask[i - 1 : i + 1, j - 1 : j + 1, k] = False  # a cavity: fill holes and closing have something to do
    free = np.argwhere(~ndimage.binary_dilation(mask, iterations=3))
    for n, index in enumerate(rng.choice(len(free), 4, replace=False)):
        a, b, c = free[index]
        mask[a : a + 1 + n % 2, b : b + 1 + n // 2, c] = True  # islands of 1, 2, 2 (not adjacent) and 4 voxels
    return mask


def _touching_the_border() -> np.ndarray:
    """The organ shifted against three faces of the volume (i = 0, j = last, k = 0): its box is the volume's."""
    mask = _organ(SHAPE, seed=3)
    found = np.argwhere(mask)
    lo, hi = found.min(axis=0), found.max(axis=0)
    shift = (-int(lo[0]), SHAPE[1] - 1 - int(hi[1]), -int(lo[2]))
    moved = np.zeros(SHAPE, dtype=bool)
    src = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, SHAPE, strict=True))
    dst = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(shift, SHAPE, strict=True))
    moved[dst] = mask[src]
    assert moved[0].any() and moved[:, -1].any() and moved[:, :, 0].any()
    return moved


def _inside() -> np.ndarray:
    """The organ well inside the volume, so that a 3 mm margin reaches past its box but not the volume's edge."""
    inner = _organ((28, 24, 12), seed=5)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[8:36, 8:32, 6:18] = inner
    return mask


def _ellipsoid(mm: float) -> np.ndarray:
    return morphology.ellipsoid(mm, SPACING)


def _keep_largest(mask: np.ndarray) -> np.ndarray:
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return np.asarray(labels == int(np.argmax(counts)))


def _erode(mask: np.ndarray, mm: float) -> np.ndarray:
    # Outside the volume is unknown: it never erodes the structure (border_value=1).
    return np.asarray(ndimage.binary_erosion(mask, _ellipsoid(mm), border_value=1))


# (operation's meta, the whole-volume reference computed by SciPy)
CASES: list[tuple[str, dict[str, Any], Any]] = [
    (
        "margin +3 mm",
        {"operation": "margin", "params": {"mm": 3.0}},
        lambda m: ndimage.binary_dilation(m, _ellipsoid(3)),
    ),
    ("margin -2 mm", {"operation": "margin", "params": {"mm": -2.0}}, lambda m: _erode(m, 2.0)),
    ("keep largest", {"operation": "islands", "params": {"mode": "keep_largest"}}, _keep_largest),
    (
        "closing 2 mm",
        {"operation": "smooth", "params": {"method": "closing", "mm": 2.0}},
        lambda m: _erode(ndimage.binary_dilation(m, _ellipsoid(2)), 2.0) | m,
    ),
    (
        "opening 1.6 mm",
        {"operation": "smooth", "params": {"method": "opening", "mm": 1.6}},
        lambda m: ndimage.binary_dilation(_erode(m, 1.6), _ellipsoid(1.6)) & m,
    ),
    ("fill holes", {"operation": "fill_holes", "params": {}}, ndimage.binary_fill_holes),
]


@pytest.mark.parametrize("where", ["touching the border", "inside"])
@pytest.mark.parametrize(("label", "meta", "reference"), CASES, ids=[c[0] for c in CASES])
def test_the_box_restricted_operation_equals_the_whole_volume_operation(
    where: str, label: str, meta: dict[str, Any], reference: Any
) -> None:
    """The operation on the structure's box (as the client sends it: its non-zero box), written back into the
    volume, gives exactly the whole-volume result, and counts exactly the voxels that change."""
    mask = _touching_the_border() if where == "touching the border" else _inside()
    request = OperationRequest.model_validate({**meta, "structure": NAME, "inputs": []}).root
    work = Work(SHAPE, SPACING, SPACING[0] * SPACING[1] * SPACING[2], {NAME: tight(Box((0, 0, 0), mask))}, 10**9)
    outcome = compute(NAME, request, work)
    assert outcome.change is not None
    result = mask.copy()
    done = outcome.change
    if done.box.size:
        o, s = done.origin, done.box.shape
        result[o[0] : o[0] + s[0], o[1] : o[1] + s[1], o[2] : o[2] + s[2]] = done.box
    expected = np.asarray(reference(mask), dtype=bool)
    assert not np.array_equal(expected, mask), f"{label} changes nothing here: the case tests nothing"
    assert np.array_equal(result, expected)
    assert (done.added, done.removed) == (int((expected & ~mask).sum()), int((mask & ~expected).sum()))
    if where == "inside" and meta["operation"] == "margin" and meta["params"]["mm"] > 0:
        found = np.argwhere(mask)
        assert (np.argwhere(expected).min(axis=0) < found.min(axis=0)).all(), "the margin must cross the box"


CONNECTIVITIES: list[islands.Connectivity] = [6, 18, 26]
ORDERS: list[Literal["C", "F"]] = ["C", "F"]


@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
@pytest.mark.parametrize("order", ORDERS)
def test_island_sizes_by_runs_equal_a_count_of_every_label(
    connectivity: islands.Connectivity, order: Literal["C", "F"]
) -> None:
    """The run-based sizes equal np.bincount of the labels (background included), in either memory order, and
    keep-largest / remove-smaller keep exactly the components a plain count picks."""
    rng = np.random.default_rng(connectivity)
    shapes = [(23, 17, 11), (23, 17, 11), (23, 17, 11), (1, 9, 4), (9, 1, 1), (2, 3, 1)]
    for shape, density in zip(shapes, (0.05, 0.3, 0.6, 0.5, 0.5, 1.0), strict=True):
        mask = np.asarray(rng.random(shape) < density, order=order)
        labels = cc3d.connected_components(mask, connectivity=connectivity, binary_image=True)
        expected = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
        assert np.array_equal(islands._sizes(mask, labels, int(labels.max())), expected)
        kept, count = islands.keep_largest(mask, connectivity)
        assert count == len(expected) - 1
        assert np.array_equal(kept, labels == int(np.argmax(expected[1:])) + 1)
        cleaned, removed = islands.remove_smaller(mask, 3, connectivity)
        assert removed == int((expected[1:] < 3).sum())
        assert np.array_equal(cleaned, np.isin(labels, np.flatnonzero(expected >= 3)) & mask)
