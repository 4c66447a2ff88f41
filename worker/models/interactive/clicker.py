"""The simulated clicker: each click at the centre of the largest error region, as the interactive benchmarks do.

The error is ``prediction XOR truth``; its largest connected component (26-connected) gets the next click, at the
voxel farthest from the component's boundary (Euclidean distance transform in mm, the volume's edge counting as
boundary, ties broken towards the component's centroid). The click is positive where the truth is (a missed
part), negative elsewhere (a false positive). Work is bounded to the error's bounding box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["dice", "next_click"]

Index = tuple[int, int, int]
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    p, t = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    if p + t == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & truth)) / (p + t)


def centre_of(region: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Index:
    """The voxel of a (non-empty) boolean region farthest from its boundary, ties towards its centroid."""
    found = ndimage.find_objects(region.view(np.uint8) if region.dtype == bool else region.astype(np.uint8))
    box = found[0]
    assert box is not None
    sub = np.pad(region[box], 1)
    edt = ndimage.distance_transform_edt(sub, sampling=spacing)
    best = float(edt.max())
    cand = np.argwhere(edt >= best - 1e-6)
    centroid = np.argwhere(sub).mean(axis=0)
    pick = cand[int(np.argmin(((cand - centroid) ** 2).sum(axis=1)))]
    return (int(pick[0]) - 1 + box[0].start, int(pick[1]) - 1 + box[1].start, int(pick[2]) - 1 + box[2].start)


def next_click(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[Index, bool] | None:
    """The next simulated click ``(voxel, is_positive)``, or None when the prediction is perfect."""
    error = np.logical_xor(pred, truth)
    found = ndimage.find_objects(error.view(np.uint8))
    if not found or found[0] is None:
        return None
    box = found[0]
    labels, n = ndimage.label(error[box], structure=_STRUCTURE_26)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    largest = labels == int(np.argmax(sizes))
    local = centre_of(largest, spacing)
    point = (local[0] + box[0].start, local[1] + box[1].start, local[2] + box[2].start)
    return point, bool(truth[point])
