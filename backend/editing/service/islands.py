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


def _components(mask: np.ndarray, connectivity: Connectivity) -> tuple[np.ndarray, np.ndarray]:
    """(component labels, voxels per label with label 0 the background)."""
    data = contiguous(mask)
    labels = np.asarray(cc3d.connected_components(data, connectivity=connectivity, binary_image=True))
    return labels, np.bincount(labels.ravel(order="K"))


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
