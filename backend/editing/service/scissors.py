"""Scissors: erase with a polygon drawn on a slice, extruded along the slice normal (whole volume or a slab)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.draw import polygon2mask


def polygon_plane(shape: tuple[int, int], polygon: Sequence[Sequence[float]], offset: tuple[int, int]) -> np.ndarray:
    """The pixels of a `shape` plane whose centres lie inside the polygon; vertices are (x, y) in the plane's
    storage coordinates and `offset` is the plane's first pixel there."""
    local = np.asarray(polygon, dtype=np.float64) - np.asarray(offset, dtype=np.float64)
    return np.asarray(polygon2mask(shape, local), dtype=bool)


def cut(
    mask: np.ndarray,
    origin: tuple[int, int, int],
    polygon: Sequence[Sequence[float]],
    axis: int,
    slab: tuple[int, int] | None,
    keep_inside: bool,
) -> np.ndarray:
    """Erase the voxels outside (keep_inside) or inside the polygon's extrusion along `axis`, within the slab
    [first, last] (volume indices, inclusive) or everywhere; `origin` is the array's first voxel."""
    first, second = (a for a in range(3) if a != axis)
    plane = polygon_plane((mask.shape[first], mask.shape[second]), polygon, (origin[first], origin[second]))
    erase = ~plane if keep_inside else plane
    lo, hi = 0, mask.shape[axis]
    if slab is not None:
        lo = max(lo, slab[0] - origin[axis])
        hi = min(hi, slab[1] - origin[axis] + 1)
    out = mask.copy(order="K")
    if hi <= lo:
        return out
    moved = np.moveaxis(out, axis, 0)
    moved[lo:hi] &= ~erase[None, :, :]
    return out
