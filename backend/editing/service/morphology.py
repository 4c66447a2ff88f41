"""Morphology in millimetres on anisotropic voxels: margin (grow/shrink), smoothing, fill holes, the sphere brush.

Distances are exact Euclidean distances between voxel centres on the scan's spacing, so a dilation by r mm is
the dilation by the ellipsoidal structuring element {offset d : |d * spacing| <= r} — the element
`sphere_offsets` lists, which the browser's sphere brush paints too (and Slicer's margin effect uses: distances
between voxel centres). Opening and closing are that dilation and the matching erosion. Two exact ways compute
them, both giving SciPy's binary_dilation/binary_erosion voxels with that element at a fraction of the time:

* small radii (up to `_MAX_ROWS` rows in the element): the element is a union of segments along its finest axis;
  a dilation by each segment length is two shifted ORs per voxel step, and the rows are ORed bit-packed (8 voxels
  a byte) — a few passes over the box;
* larger radii: the exact Euclidean distance transform of the `edt` package, thresholded.

The median is a majority vote inside the same element (an FFT correlation, bounded in memory by working in slabs).

Outside the volume counts as unknown, not as background: a structure touching the volume's edge is not eroded
from that edge.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Literal

import edt
import fill_voids
import numpy as np
from scipy import signal

from backend.editing.service.boxes import contiguous

Spacing = tuple[float, float, float]

# A squared distance within this relative tolerance of r² counts as r (float32 distances, float64 offsets).
_EPS = 1e-6
# Threads of one distance transform; the API process runs few operations at once.
EDT_THREADS = max(1, min(4, os.cpu_count() or 1))
# Voxels per slab of the median's FFT correlation (about 64 MiB of complex64 working memory).
_MEDIAN_SLAB_VOXELS = 4_000_000


def _limit(mm: float) -> float:
    """r² with the tolerance that makes a voxel exactly r away count as within r."""
    return mm * mm * (1 + _EPS) + 1e-9


def sphere_offsets(radius_mm: float, spacing: Spacing) -> np.ndarray:
    """Integer voxel offsets (N, 3) within `radius_mm` of the centre on anisotropic `spacing` (centre included)."""
    if radius_mm < 0 or not math.isfinite(radius_mm):
        raise ValueError("radius_mm must be a finite number >= 0")
    footprint = ellipsoid(radius_mm, spacing)
    centre = np.array(footprint.shape) // 2
    return np.argwhere(footprint) - centre


def ellipsoid(radius_mm: float, spacing: Spacing) -> np.ndarray:
    """The boolean structuring element of `sphere_offsets`, centred in an odd-sized array."""
    half = [math.floor(radius_mm / s * (1 + _EPS)) for s in spacing]
    grids = np.ogrid[-half[0] : half[0] + 1, -half[1] : half[1] + 1, -half[2] : half[2] + 1]
    squared = sum((g * s) ** 2 for g, s in zip(grids, spacing, strict=True))
    return np.asarray(squared <= _limit(radius_mm))


# Above this many rows in the element, the distance transform is faster than the bit-packed rows.
_MAX_ROWS = 64


def _row_plan(mm: float, spacing: Spacing) -> tuple[int, dict[int, list[tuple[int, int]]]]:
    """The element as segments along its finest axis: (that axis, {half-length: [offsets along the other two]})."""
    axis = int(np.argmin(spacing))
    first, second = (a for a in range(3) if a != axis)
    limit = _limit(mm)
    reach = math.sqrt(limit)
    rows: dict[int, list[tuple[int, int]]] = {}
    for b in range(-math.floor(reach / spacing[first]), math.floor(reach / spacing[first]) + 1):
        for c in range(-math.floor(reach / spacing[second]), math.floor(reach / spacing[second]) + 1):
            rest = limit - (b * spacing[first]) ** 2 - (c * spacing[second]) ** 2
            if rest >= 0:
                rows.setdefault(math.floor(math.sqrt(rest) / spacing[axis]), []).append((b, c))
    return axis, rows


def _segments(mask: np.ndarray, longest: int, grow: bool) -> Iterator[tuple[int, np.ndarray]]:
    """(w, the mask dilated (grow) or eroded along axis 0 by the segment [-w, w]) for w = 0 .. longest; beyond the
    array's ends nothing is added and nothing is eroded (outside the volume is unknown)."""
    current = mask
    yield 0, current
    for w in range(1, longest + 1):
        nxt = current.copy(order="K")
        if grow:
            nxt[1:] |= current[:-1]
            nxt[:-1] |= current[1:]
        else:
            nxt[1:] &= current[:-1]
            nxt[:-1] &= current[1:]
        current = nxt
        yield w, current


def _pair(n: int, d: int) -> tuple[slice, slice]:
    """Slices (target, source) of an axis of length n so that target[y] pairs with source[y + d]."""
    return slice(max(0, -d), n - max(0, d)), slice(max(0, d), n + min(0, d))


def _by_rows(mask: np.ndarray, axis: int, rows: dict[int, list[tuple[int, int]]], grow: bool) -> np.ndarray:
    """Dilate (grow) or erode by the element given as rows: the union (intersection) of each row's segment result
    shifted by the row's offset, on bit-packed planes."""
    moved = np.moveaxis(contiguous(mask), axis, 0)
    n0, n1, n2 = moved.shape
    # The packed planes keep the mask's memory order (packbits does): shifted ORs then run over long spans.
    order: Literal["C", "F"] = "F" if moved.strides[0] <= moved.strides[-1] else "C"
    out = np.full(((n0 + 7) // 8, n1, n2), 0 if grow else 255, dtype=np.uint8, order=order)
    combine = np.bitwise_or if grow else np.bitwise_and
    for w, segment in _segments(moved, max(rows), grow):
        if w not in rows:
            continue
        # Packed along the segments' axis, in the mask's own memory order (no transposing copy either way).
        packed = np.packbits(segment, axis=0)
        for b, c in rows[w]:
            (dst1, src1), (dst2, src2) = _pair(n1, b), _pair(n2, c)
            combine(out[:, dst1, dst2], packed[:, src1, src2], out=out[:, dst1, dst2])
    result = np.moveaxis(np.unpackbits(out, axis=0, count=n0).view(bool), 0, axis)
    return result if grow else result & mask


def _squared_distance_to_zero(mask: np.ndarray, spacing: Spacing) -> np.ndarray:
    """Squared distance (mm²) from each non-zero voxel to the nearest zero voxel (0 on zero voxels)."""
    data = contiguous(mask).view(np.uint8)
    return np.asarray(edt.edtsq(data, anisotropy=spacing, black_border=False, parallel=EDT_THREADS))


def dilate(mask: np.ndarray, spacing: Spacing, mm: float) -> np.ndarray:
    """Voxels within `mm` of the mask (the mask included)."""
    if mm <= 0 or not mask.any():
        return mask.copy(order="K")
    axis, rows = _row_plan(mm, spacing)
    if sum(len(r) for r in rows.values()) <= _MAX_ROWS:
        return _by_rows(mask, axis, rows, grow=True)
    return np.asarray(_squared_distance_to_zero(~mask, spacing) <= _limit(mm))


def erode(mask: np.ndarray, spacing: Spacing, mm: float) -> np.ndarray:
    """Voxels of the mask farther than `mm` from every background voxel of the array."""
    if mm <= 0 or mask.all():
        return mask.copy(order="K")
    axis, rows = _row_plan(mm, spacing)
    if sum(len(r) for r in rows.values()) <= _MAX_ROWS:
        return _by_rows(mask, axis, rows, grow=False)
    return np.asarray(_squared_distance_to_zero(mask, spacing) > _limit(mm))


def margin(mask: np.ndarray, spacing: Spacing, mm: float) -> np.ndarray:
    """Grow (mm > 0) or shrink (mm < 0) by an exact Euclidean margin; pad the array by |mm| + 1 voxel first."""
    if mm > 0:
        return dilate(mask, spacing, mm)
    if mm < 0:
        return erode(mask, spacing, -mm)
    return mask.copy(order="K")


def opening(mask: np.ndarray, spacing: Spacing, mm: float) -> np.ndarray:
    """Morphological opening with the ellipsoid of radius `mm`: removes what the ellipsoid cannot fit into."""
    return dilate(erode(mask, spacing, mm), spacing, mm) & mask


def closing(mask: np.ndarray, spacing: Spacing, mm: float) -> np.ndarray:
    """Morphological closing with the ellipsoid of radius `mm`: fills gaps and dents narrower than it."""
    return erode(dilate(mask, spacing, mm), spacing, mm) | mask


def median(mask: np.ndarray, spacing: Spacing, mm: float) -> np.ndarray:
    """Binary median: a voxel is set when most voxels of the ellipsoid of radius `mm` around it are."""
    footprint = ellipsoid(mm, spacing)
    count = int(footprint.sum())
    if count <= 1 or not mask.any():
        return mask.copy(order="K")
    kernel = footprint[::-1, ::-1, ::-1].astype(np.float32)
    halo = footprint.shape[2] // 2
    plane = max(1, mask.shape[0] * mask.shape[1])
    step = max(1, _MEDIAN_SLAB_VOXELS // plane - 2 * halo)
    # Edge voxels repeat outwards (outside the volume is unknown, as for the other operations).
    padded = np.pad(mask, [(s // 2, s // 2) for s in footprint.shape], mode="edge").astype(np.float32)
    out = np.empty(mask.shape, dtype=bool)
    for k0 in range(0, mask.shape[2], step):
        k1 = min(mask.shape[2], k0 + step)
        block = padded[:, :, k0 : k1 + 2 * halo]
        votes = signal.fftconvolve(block, kernel, mode="valid")
        out[:, :, k0:k1] = votes > count / 2
    return out


def fill_holes(mask: np.ndarray, per_slice_axis: int | None = None) -> np.ndarray:
    """Fill cavities not connected to the array's border: in 3D, or in each slice along `per_slice_axis`."""
    if per_slice_axis is None:
        return np.asarray(fill_voids.fill(contiguous(mask), in_place=False), dtype=bool)
    out = np.array(mask, dtype=bool, copy=True)
    for index in range(mask.shape[per_slice_axis]):
        plane = np.take(mask, index, axis=per_slice_axis)
        if plane.any():
            filled = np.asarray(fill_voids.fill(np.ascontiguousarray(plane), in_place=False), dtype=bool)
            view = [slice(None)] * 3
            view[per_slice_axis] = slice(index, index + 1)
            out[tuple(view)] = np.expand_dims(filled, per_slice_axis)
    return out
