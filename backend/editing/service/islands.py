"""Islands: keep the largest connected component, remove the small ones, or keep the one clicked on
(connected-components-3d, 6/18/26-connectivity)."""

from __future__ import annotations

import math
from typing import Literal

import cc3d
import numpy as np

from backend.core.errors import InvalidInput
from backend.editing.service.boxes import contiguous

Connectivity = Literal[6, 18, 26]


def _lines(array: np.ndarray, fortran: bool) -> np.ndarray:
    """The array as rows along its fastest axis in memory (i for a Fortran-ordered box): a view, no copy."""
    return array.T.reshape(-1, array.shape[0]) if fortran else array.reshape(-1, array.shape[-1])


def _sizes(data: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Voxels per label (label 0 the background), counted by runs: consecutive set voxels of a row are face
    neighbours, so one component, and a mask holds far fewer runs than voxels. np.bincount over every label
    voxel costs a scalar pass over the whole box; this costs one comparison pass and a bincount of the runs."""
    fortran = bool(data.flags.f_contiguous and not data.flags.c_contiguous)
    rows = _lines(data, fortran)
    width = rows.shape[1]
    flat = rows.reshape(-1)
    # Where the value changes in memory order: a run starts at a change to 1 and ends before a change to 0 ...
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts, ends = changes[flat[changes]], changes[~flat[changes]] - 1
    # ... and a row's first and last voxel start and end a run when set (rows are not neighbours of each other).
    starts = np.union1d(starts, np.flatnonzero(rows[:, 0]) * width)
    ends = np.union1d(ends, np.flatnonzero(rows[:, -1]) * width + width - 1)
    at = _lines(labels, fortran).reshape(-1)[starts]
    sizes = np.bincount(at, weights=ends - starts + 1, minlength=count + 1).astype(np.int64)
    sizes[0] = data.size - int(sizes[1:].sum())
    return sizes


def _components(mask: np.ndarray, connectivity: Connectivity) -> tuple[np.ndarray, np.ndarray]:
    """(component labels, voxels per label with label 0 the background)."""
    data = contiguous(mask)
    labels, count = cc3d.connected_components(data, connectivity=connectivity, binary_image=True, return_N=True)
    labels = np.asarray(labels)
    return labels, _sizes(data, labels, int(count))


def keep_largest(mask: np.ndarray, connectivity: Connectivity = 26) -> tuple[np.ndarray, int]:
    """(only the largest connected component, the number of components); the first in scan order among equals."""
    if not mask.any():
        return mask.copy(order="K"), 0
    labels, counts = _components(mask, connectivity)
    return np.asarray(labels == int(np.argmax(counts[1:])) + 1), len(counts) - 1


def remove_smaller(mask: np.ndarray, min_voxels: int, connectivity: Connectivity = 26) -> tuple[np.ndarray, int]:
    """(the mask without its components of fewer than `min_voxels` voxels, how many were removed)."""
    if not mask.any() or min_voxels <= 1:
        return mask.copy(order="K"), 0
    labels, counts = _components(mask, connectivity)
    keep = counts >= min_voxels
    keep[0] = False
    return np.asarray(keep[labels]), int(np.count_nonzero(~keep[1:]))


def keep_clicked(
    mask: np.ndarray, voxel: tuple[int, int, int], connectivity: Connectivity = 26
) -> tuple[np.ndarray, int]:
    """(only the component holding `voxel` (array indices), the number of components); the voxel must be set."""
    inside = all(0 <= voxel[a] < mask.shape[a] for a in range(3))
    if not inside or not mask[voxel]:
        raise InvalidInput("the clicked voxel is not part of the structure: click inside the island to keep")
    labels, counts = _components(mask, connectivity)
    return np.asarray(labels == labels[voxel]), len(counts) - 1


def voxels_for_ml(ml: float, voxel_volume_mm3: float) -> int:
    """The smallest whole number of voxels holding at least `ml` millilitres."""
    return max(1, math.ceil(ml * 1000.0 / voxel_volume_mm3 - 1e-9))


def count_components(mask: np.ndarray, connectivity: Connectivity = 26) -> int:
    """Number of connected components of a mask."""
    if not mask.any():
        return 0
    data = contiguous(mask)
    _labels, n = cc3d.connected_components(data, connectivity=connectivity, return_N=True, binary_image=True)
    return int(n)
