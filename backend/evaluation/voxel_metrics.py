"""MONAI's voxel-based surface metrics (`metric_definition="monai"`), in numpy + SciPy (no torch in the API).

MONAI 1.x `compute_surface_dice` (with `use_subvoxels=False`, the default) and `compute_hausdorff_distance`
(`percentile=95`) define the surface of a mask as its *boundary voxels*: the mask minus its binary erosion with
the 6-connected cross (SciPy's default structure, voxels outside the image counting as background). Each boundary
voxel counts once, whatever its area. The distance of a boundary voxel to the other mask is the Euclidean
distance in mm (voxel index × spacing) to the nearest boundary voxel of the other mask; MONAI stores these
distances as float32, and so does this module, so that a distance on the tolerance compares the same way.

- NSD@τ = (#gt boundary voxels within τ of pred + #pred boundary voxels within τ of gt) / (#gt + #pred).
- HD95 = max over the two directions of the 95th percentile (linear interpolation, `torch.quantile`'s
  default) of the boundary-voxel distances.

Empty masks are handled by `metrics.evaluate_pair` (undefined, as for the other definitions), never here.
These numbers disagree with the area-weighted ones on thin or anisotropic shapes (DESIGN.md §11); they exist so
that a report can be compared with work that used MONAI.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Spacing = tuple[float, float, float]


def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary voxels: the mask minus its 6-connected binary erosion (outside = background)."""
    mask = mask.astype(bool, copy=False)
    return np.asarray(mask ^ ndimage.binary_erosion(mask, border_value=0))


def _distances(query: np.ndarray, target: np.ndarray, spacing: Spacing) -> np.ndarray:
    """Distance in mm (float32) from every query voxel to the nearest target voxel (infinite without targets)."""
    if not target.any():
        return np.full(int(np.count_nonzero(query)), np.inf, dtype=np.float32)
    field = ndimage.distance_transform_edt(~target, sampling=spacing)
    return np.asarray(field[query], dtype=np.float32)


def boundary_distances(gt: np.ndarray, pred: np.ndarray, spacing: Spacing) -> tuple[np.ndarray, np.ndarray]:
    """(gt boundary voxel → pred boundary, pred boundary voxel → gt boundary) distances in mm, float32.

    The masks may be crops of the full arrays as long as every voxel of both lies inside them with a margin of one
    voxel or touches the array border the same way in both (distances between boundary voxels do not depend on
    anything else).
    """
    edges_gt, edges_pred = boundary(gt), boundary(pred)
    return _distances(edges_gt, edges_pred, spacing), _distances(edges_pred, edges_gt, spacing)


def surface_dice(d_gt_pred: np.ndarray, d_pred_gt: np.ndarray, tolerance_mm: float) -> float | None:
    """Boundary-voxel NSD at a tolerance in mm; None when either side has no boundary voxel."""
    if d_gt_pred.size == 0 or d_pred_gt.size == 0:
        return None
    tau = np.float32(tolerance_mm)
    within = int(np.count_nonzero(d_gt_pred <= tau)) + int(np.count_nonzero(d_pred_gt <= tau))
    return within / float(d_gt_pred.size + d_pred_gt.size)


def percentile_hausdorff(d_gt_pred: np.ndarray, d_pred_gt: np.ndarray, percent: float) -> float | None:
    """Max over both directions of the linearly interpolated percentile of boundary-voxel distances (mm)."""
    if d_gt_pred.size == 0 or d_pred_gt.size == 0:
        return None
    q = percent / 100.0
    return float(max(np.quantile(d_gt_pred.astype(np.float64), q), np.quantile(d_pred_gt.astype(np.float64), q)))
