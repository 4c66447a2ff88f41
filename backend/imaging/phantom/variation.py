"""Opt-in shape variation of the phantom: organ sizes and positions, lesion size and position, a smooth warp.

``generate_phantom(..., variation=v)`` with ``v > 0`` draws a ``Variation`` from its own random stream (seeded by
``(seed, 0x5EED)``), so the default phantom (``v = 0``) consumes exactly the same draws as before and stays
byte-identical. ``v`` scales every effect linearly; ``v = 1`` is the strength the interactive model's held-out
benchmark uses:

- organ size: an independent factor per organ and axis, ``exp(N(0, 0.12 v))`` clipped to ``1 ± 0.3 v``;
- organ position: a shift of up to ``±8 v`` mm per axis (on top of the default ±3 mm);
- pancreas: its centreline points move by up to ``±6 v`` mm, its radii by ``±15 v`` %;
- lesion: its radius drawn in ``[9 - 5 v, 14 + 6 v]`` mm, its part uniformly, its position anywhere along the
  part and off the centreline;
- great vessels: radii by ``±20 v`` %;
- a smooth random deformation of the whole label map: displacements drawn on a coarse control grid
  (``N(0, 6 v)`` mm, clipped at ±15 mm), interpolated with cubic splines to every voxel, applied with nearest
  neighbour lookup so masks stay exact label sets;
- optionally (``duct=True``) a pancreatic duct: a thin tube along the pancreas centreline, an overlay like the
  veins (``pancreatic_duct`` mask, fluid HU), present only when asked for.

All sizes are template millimetres (``TEMPLATE_FOV_MM``), stretched onto the real field of view like the rest of
the anatomy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

from backend.imaging.phantom.geometry import TEMPLATE_FOV_MM, Box, Grid, Vec3

ORGANS = ("lung_l", "lung_r", "liver", "spleen", "stomach", "gall", "kid_l", "kid_r")
DUCT_HU = 5
_CONTROL_POINTS = (6, 6, 5)
_SLAB_VOXELS = 1 << 21  # voxels warped per slab: bounds the temporary coordinate arrays (~50 MB)


@dataclass(frozen=True)
class Variation:
    """Per-phantom shape variation drawn from its own random stream (see the module docstring)."""

    strength: float
    organ_scale: dict[str, Vec3]
    organ_shift: dict[str, Vec3]
    pancreas_shift: tuple[Vec3, ...]
    pancreas_radius: tuple[float, ...]
    vessel_radius: float
    lesion_part: int
    lesion_u: float
    lesion_offset: Vec3
    lesion_radius_mm: float
    duct_radius_mm: float
    control: np.ndarray  # (3, *_CONTROL_POINTS) displacement in template mm


def draw_variation(seed: int, strength: float) -> Variation:
    """Draw a phantom's variation of the given strength (0 < strength ≤ 2) from ``(seed, 0x5EED)``."""
    if not 0.0 < strength <= 2.0:
        raise ValueError(f"variation must be within (0, 2], got {strength!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5EED]))
    v = float(strength)

    def factor(sd: float, lim: float) -> float:
        return float(np.clip(math.exp(rng.normal(0.0, sd * v)), 1.0 - lim * v, 1.0 + lim * v))

    def shift(mm: float) -> Vec3:
        d = rng.uniform(-mm * v, mm * v, size=3)
        return (float(d[0]), float(d[1]), float(d[2]))

    organ_scale = {name: (factor(0.12, 0.3), factor(0.12, 0.3), factor(0.12, 0.3)) for name in ORGANS}
    organ_shift = {name: shift(8.0) for name in ORGANS}
    pancreas_shift = tuple(shift(6.0) for _ in range(4))
    pancreas_radius = tuple(float(rng.uniform(1.0 - 0.15 * v, 1.0 + 0.15 * v)) for _ in range(4))
    vessel_radius = float(rng.uniform(1.0 - 0.2 * v, 1.0 + 0.2 * v))
    lesion_part = int(rng.integers(3))
    lesion_u = float(rng.uniform(-0.6, 0.6))
    lesion_offset = shift(4.0)
    lesion_radius_mm = float(rng.uniform(9.0 - 5.0 * min(v, 1.0), 14.0 + 6.0 * min(v, 1.0)))
    duct_radius_mm = float(rng.uniform(2.0, 3.5))
    control = np.clip(rng.normal(0.0, 6.0 * v, size=(3, *_CONTROL_POINTS)), -15.0, 15.0)
    return Variation(
        strength=v,
        organ_scale=organ_scale,
        organ_shift=organ_shift,
        pancreas_shift=pancreas_shift,
        pancreas_radius=pancreas_radius,
        vessel_radius=vessel_radius,
        lesion_part=lesion_part,
        lesion_u=lesion_u,
        lesion_offset=lesion_offset,
        lesion_radius_mm=lesion_radius_mm,
        duct_radius_mm=duct_radius_mm,
        control=control.astype(np.float64),
    )


def _weights(n: int, c: int) -> np.ndarray:
    """(n, c) cubic-spline weights of ``c`` control points spanning ``n`` voxels (separable interpolation)."""
    pos = np.arange(n, dtype=np.float64) * (c - 1) / max(n - 1, 1)
    return np.asarray(CubicSpline(np.arange(c, dtype=np.float64), np.eye(c), axis=0)(pos))


def _displacement(grid: Grid, control: np.ndarray, i0: int, i1: int) -> np.ndarray:
    """Displacement (3, i1 - i0, ny, nz) in voxels of the slab ``[i0, i1)``, cubic-spline interpolated."""
    w = [_weights(n, c) for n, c in zip(grid.shape, _CONTROL_POINTS, strict=True)]
    out = np.empty((3, i1 - i0, grid.shape[1], grid.shape[2]), dtype=np.float32)
    for ax in range(3):
        mm_per_voxel = TEMPLATE_FOV_MM[ax] / grid.shape[ax]
        t = np.einsum("ia,abc->ibc", w[0][i0:i1], control[ax])
        t = np.einsum("jb,ibc->ijc", w[1], t)
        out[ax] = np.einsum("kc,ijc->ijk", w[2], t) / mm_per_voxel
    return out


def warp(grid: Grid, control: np.ndarray, volumes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The label-like arrays (same shape as the grid) warped by one smooth field, nearest-neighbour lookup."""
    nx, ny, nz = grid.shape
    outs = [np.empty_like(vol) for vol in volumes]
    step = max(1, _SLAB_VOXELS // max(1, ny * nz))
    base_j = np.arange(ny, dtype=np.float32)[None, :, None]
    base_k = np.arange(nz, dtype=np.float32)[None, None, :]
    for i0 in range(0, nx, step):
        i1 = min(nx, i0 + step)
        d = _displacement(grid, control, i0, i1)
        d[0] += np.arange(i0, i1, dtype=np.float32)[:, None, None]
        d[1] += base_j
        d[2] += base_k
        for vol, out in zip(volumes, outs, strict=True):
            out[i0:i1] = ndimage.map_coordinates(vol, d, order=0, mode="nearest")
    return outs


def label_boxes(label: np.ndarray, names: dict[int, str]) -> dict[str, Box | None]:
    """Index box of each structure (by its tissue labels) in a label map, in one pass."""
    boxes: dict[str, Box | None] = {}
    for lid, slices in enumerate(ndimage.find_objects(label), start=1):
        name = names.get(lid)
        if slices is None or name is None:
            continue
        box = (slices[0].start, slices[0].stop, slices[1].start, slices[1].stop, slices[2].start, slices[2].stop)
        old = boxes.get(name)
        boxes[name] = box if old is None else _union(old, box)
    return boxes


def mask_box(mask: np.ndarray) -> tuple[Box, np.ndarray] | None:
    """A full-volume mask as (its index box, the mask inside it), or None when empty."""
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return None
    s = found[0]
    box = (s[0].start, s[0].stop, s[1].start, s[1].stop, s[2].start, s[2].stop)
    return box, np.ascontiguousarray(mask[s])


def _union(a: Box, b: Box) -> Box:
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]), min(a[4], b[4]), max(a[5], b[5]))
