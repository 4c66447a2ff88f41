"""Scan geometry for the interactive model: points in mm ↔ voxel indices, the region around the clicks, and the
exact maps between the scan's storage order, the RAS-ordered crop and the model grid.

Storage order is the array's own (i, j, k). The crop of a region is reordered to RAS by the affine's closest
canonical axes (``nibabel.orientations.io_orientation``: permutations and flips only, so an oblique scan is read
along its own voxel axes, never resampled across them), then resized to the model's fixed spacing with
``torch.nn.functional.interpolate`` (trilinear, ``align_corners=False``): canonical index ``x`` of an axis of ``n``
voxels and model index ``u`` of ``m`` voxels are related by ``u = (x + 0.5) · m / n − 0.5``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from nibabel.orientations import apply_orientation, io_orientation

from worker.models.interactive.errors import InvalidRequest

__all__ = [
    "Frame",
    "Region",
    "choose_region",
    "from_canonical",
    "spacing_of",
    "to_canonical",
    "voxel_to_world",
    "world_to_voxel",
]

Index = tuple[int, int, int]
Frame = str  # "RAS" (nibabel/NIfTI world) or "LPS" (DICOM/ITK/Slicer world)
_FLIP_LPS = np.array([-1.0, -1.0, 1.0])


def _check_affine(affine: np.ndarray) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise InvalidRequest("the affine must be a finite, invertible 4×4 voxel→world matrix")
    return a


def _frame_sign(frame: Frame) -> np.ndarray:
    if frame.upper() == "RAS":
        return np.ones(3)
    if frame.upper() == "LPS":
        return _FLIP_LPS
    raise InvalidRequest(f"frame must be 'RAS' or 'LPS', got {frame!r}")


def world_to_voxel(points_mm: Iterable[Sequence[float]], affine: np.ndarray, frame: Frame = "RAS") -> list[Index]:
    """Nearest voxel indices (storage order) of points in world mm; ``affine`` maps voxels to RAS mm.

    ``frame="LPS"`` reads the points as DICOM/ITK/Slicer coordinates (x and y negated).
    """
    a = _check_affine(affine)
    pts = np.asarray(list(points_mm), dtype=np.float64).reshape(-1, 3) * _frame_sign(frame)
    ijk = np.linalg.solve(a[:3, :3], (pts - a[:3, 3]).T).T
    return [(int(v[0]), int(v[1]), int(v[2])) for v in np.rint(ijk).astype(np.int64)]


def voxel_to_world(indices: Iterable[Sequence[float]], affine: np.ndarray, frame: Frame = "RAS") -> np.ndarray:
    """World mm (N, 3) of voxel indices (storage order), in RAS or LPS."""
    a = _check_affine(affine)
    ijk = np.asarray(list(indices), dtype=np.float64).reshape(-1, 3)
    return np.asarray((ijk @ a[:3, :3].T + a[:3, 3]) * _frame_sign(frame))


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along each storage axis: the norms of the affine's columns."""
    s = np.linalg.norm(_check_affine(affine)[:3, :3], axis=0)
    return (float(s[0]), float(s[1]), float(s[2]))


def orientation_of(affine: np.ndarray) -> np.ndarray:
    """The closest canonical axes of an affine: row i = (RAS axis of storage axis i, ±1)."""
    return np.asarray(io_orientation(_check_affine(affine)))


def to_canonical(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Reorder (permute/flip) a storage-ordered array to RAS order, contiguous."""
    return np.ascontiguousarray(apply_orientation(array, ornt))


def from_canonical(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of ``to_canonical``: a RAS-ordered array back to storage order, contiguous."""
    inverse = np.zeros((3, 2))
    for axis, (target, flip) in enumerate(ornt):
        inverse[int(target)] = (axis, flip)
    return np.ascontiguousarray(apply_orientation(array, inverse))


@dataclass(frozen=True)
class Region:
    """A box of the scan (storage indices, half-open) and the model grid it is resized to."""

    lo: Index
    hi: Index
    ornt: np.ndarray  # storage axis -> (RAS axis, flip)
    model_shape: Index  # RAS order, before padding
    padded_shape: Index  # RAS order, multiples of the network's divisor

    @property
    def shape(self) -> Index:
        """The region's shape in storage order."""
        return (self.hi[0] - self.lo[0], self.hi[1] - self.lo[1], self.hi[2] - self.lo[2])

    @property
    def canonical_shape(self) -> Index:
        """The region's shape in RAS order."""
        out = [0, 0, 0]
        for axis, (target, _flip) in enumerate(self.ornt):
            out[int(target)] = self.shape[axis]
        return (out[0], out[1], out[2])

    def slices(self) -> tuple[slice, slice, slice]:
        """Slices of the region in the scan (storage order)."""
        return (slice(self.lo[0], self.hi[0]), slice(self.lo[1], self.hi[1]), slice(self.lo[2], self.hi[2]))

    def contains(self, point: Sequence[int]) -> bool:
        """Whether a storage-order voxel lies inside the region."""
        return all(self.lo[a] <= int(point[a]) < self.hi[a] for a in range(3))

    def to_model(self, point: Sequence[int]) -> Index:
        """The model-grid voxel (RAS order) of a storage-order scan voxel inside the region."""
        canon = [0.0, 0.0, 0.0]
        for axis, (target, flip) in enumerate(self.ornt):
            rel = int(point[axis]) - self.lo[axis]
            n = self.shape[axis]
            canon[int(target)] = rel if flip > 0 else n - 1 - rel
        cshape = self.canonical_shape
        out = [
            min(m - 1, max(0, round((x + 0.5) * m / n - 0.5)))
            for x, m, n in zip(canon, self.model_shape, cshape, strict=True)
        ]
        return (out[0], out[1], out[2])


def choose_region(
    shape: Sequence[int],
    affine: np.ndarray,
    points: Sequence[Sequence[int]],
    extra_box: tuple[Index, Index] | None,
    *,
    model_spacing: float,
    margin_mm: float,
    min_extent_mm: float,
    max_size: int,
    divisor: int,
) -> Region:
    """The region around the clicks (and ``extra_box``, e.g. the previous mask's, half-open) with a margin.

    Each axis spans at least ``min_extent_mm`` and at most ``max_size`` model voxels; when the clicks and the box
    need more, the region centres on the clicks. A region at the volume's edge is shifted inwards, not shrunk,
    where the volume allows.
    """
    spacing = spacing_of(affine)
    ornt = orientation_of(affine)
    clicks = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    corners = clicks
    if extra_box is not None:
        corners = np.concatenate(
            [clicks, np.asarray(extra_box[0], float)[None], np.asarray(extra_box[1], float)[None] - 1]
        )
    if len(corners) == 0:
        raise InvalidRequest("a region needs at least one click or a previous mask")
    lo_all, hi_all = corners.min(axis=0), corners.max(axis=0)
    focus = clicks if len(clicks) else corners
    max_extent = max_size * model_spacing
    lo: list[int] = []
    hi: list[int] = []
    for axis in range(3):
        n, sp = int(shape[axis]), spacing[axis]
        need = (hi_all[axis] - lo_all[axis] + 1) * sp + 2 * margin_mm
        extent = min(max(need, min_extent_mm), max_extent)
        centre = (lo_all[axis] + hi_all[axis]) / 2
        if need > max_extent:
            centre = (focus[:, axis].min() + focus[:, axis].max()) / 2
        size = min(n, max(1, math.floor(extent / sp)))
        a = round(centre - (size - 1) / 2)
        a = min(max(a, 0), n - size)
        lo.append(a)
        hi.append(a + size)
    model = [0, 0, 0]
    for axis, (target, _flip) in enumerate(ornt):
        model[int(target)] = max(1, round((hi[axis] - lo[axis]) * spacing[axis] / model_spacing))
    model = [min(m, max_size) for m in model]
    padded = [max(divisor, math.ceil(m / divisor) * divisor) for m in model]
    return Region(
        lo=(lo[0], lo[1], lo[2]),
        hi=(hi[0], hi[1], hi[2]),
        ornt=ornt,
        model_shape=(model[0], model[1], model[2]),
        padded_shape=(padded[0], padded[1], padded[2]),
    )
