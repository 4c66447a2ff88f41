"""Boxes of a mask in the volume: bounds, padded work regions, cropping, and the changed box of a result."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class Box:
    """A boolean mask known on a box of the volume (voxels outside it are 0); `mask.shape` is the box size."""

    origin: Shape3
    mask: np.ndarray

    @property
    def size(self) -> Shape3:
        """The box extent in voxels."""
        return (int(self.mask.shape[0]), int(self.mask.shape[1]), int(self.mask.shape[2]))

    @classmethod
    def empty(cls) -> Box:
        """A box that holds nothing."""
        return cls((0, 0, 0), np.zeros((0, 0, 0), dtype=bool))


@dataclass(frozen=True)
class Region:
    """A box of the volume where an operation works: origin and size (both in voxels)."""

    origin: Shape3
    size: Shape3

    @property
    def stop(self) -> Shape3:
        """One past the last voxel along each axis."""
        return (self.origin[0] + self.size[0], self.origin[1] + self.size[1], self.origin[2] + self.size[2])

    @property
    def voxels(self) -> int:
        """Voxels in the region."""
        return self.size[0] * self.size[1] * self.size[2]

    def slices(self) -> tuple[slice, slice, slice]:
        """The region's slices into the whole volume."""
        return (
            slice(self.origin[0], self.stop[0]),
            slice(self.origin[1], self.stop[1]),
            slice(self.origin[2], self.stop[2]),
        )


def contiguous(mask: np.ndarray) -> np.ndarray:
    """A contiguous boolean array in the mask's own memory order: a box of an i-fastest (Fortran) mask stays
    i-fastest, so no transposing copy is made (libraries take either order)."""
    data = np.asarray(mask, dtype=bool)
    if data.strides[0] <= data.strides[-1]:
        return np.asfortranarray(data)
    return np.ascontiguousarray(data)


def nonzero_bounds(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(first, one past last) index of a 2D or 3D mask's non-zero bounding box along each axis; None when empty."""
    lo: list[int] = []
    hi: list[int] = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        lo.append(int(hits[0]))
        hi.append(int(hits[-1]) + 1)
    return tuple(lo), tuple(hi)


def tight(box: Box) -> Box:
    """The same mask on its own non-zero bounding box (an empty box when it holds nothing)."""
    bounds = nonzero_bounds(box.mask)
    if bounds is None:
        return Box.empty()
    lo, hi = bounds
    origin = (box.origin[0] + lo[0], box.origin[1] + lo[1], box.origin[2] + lo[2])
    return Box(origin, box.mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])


def is_empty(box: Box) -> bool:
    """Whether the box covers no voxel."""
    return box.mask.size == 0


def voxel_pad(mm: float, spacing: tuple[float, float, float], extra: int = 1) -> Shape3:
    """Voxels to pad along each axis so that every voxel within `mm` of a box lies in the padded box (+ extra)."""
    return (
        math.ceil(abs(mm) / spacing[0]) + extra,
        math.ceil(abs(mm) / spacing[1]) + extra,
        math.ceil(abs(mm) / spacing[2]) + extra,
    )


def around(boxes: list[Box], pad: Shape3, shape: Shape3) -> Region | None:
    """The union of the non-empty boxes, padded and clipped to the volume; None when every box is empty."""
    present = [b for b in boxes if not is_empty(b)]
    if not present:
        return None
    lo = [min(b.origin[a] for b in present) - pad[a] for a in range(3)]
    hi = [max(b.origin[a] + b.size[a] for b in present) + pad[a] for a in range(3)]
    lo = [max(0, v) for v in lo]
    hi = [min(shape[a], hi[a]) for a in range(3)]
    return Region((lo[0], lo[1], lo[2]), (hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]))


def crop(box: Box, region: Region) -> np.ndarray:
    """The box's mask on a region (zeros where the box does not reach), as a new array in the boxes' storage
    order (Fortran: i fastest, as decoded from and encoded to the client, so copies stay contiguous)."""
    out = np.zeros(region.size, dtype=bool, order="F")
    if is_empty(box):
        return out
    src, dst = [], []
    for axis in range(3):
        lo = max(box.origin[axis], region.origin[axis])
        hi = min(box.origin[axis] + box.size[axis], region.stop[axis])
        if hi <= lo:
            return out
        src.append(slice(lo - box.origin[axis], hi - box.origin[axis]))
        dst.append(slice(lo - region.origin[axis], hi - region.origin[axis]))
    out[dst[0], dst[1], dst[2]] = box.mask[src[0], src[1], src[2]]
    return out


@dataclass(frozen=True)
class Change:
    """An operation's result for the target: its new voxels on the smallest box holding every changed voxel."""

    origin: Shape3
    box: np.ndarray
    added: int
    removed: int


def change(old: np.ndarray, new: np.ndarray, region: Region) -> Change:
    """Compare the target's old and new mask on a region: the changed box (new voxels) and the counts."""
    changed = old ^ new
    bounds = nonzero_bounds(changed)
    if bounds is None:
        return Change((0, 0, 0), np.zeros((0, 0, 0), dtype=bool), 0, 0)
    lo, hi = bounds
    window = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    total = int(np.count_nonzero(changed[window]))
    added = int(np.count_nonzero(changed[window] & new[window]))
    removed = total - added
    origin = (region.origin[0] + lo[0], region.origin[1] + lo[1], region.origin[2] + lo[2])
    return Change(origin, new[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], added, removed)
