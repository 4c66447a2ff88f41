"""Template geometry of the phantom: the voxel grid in template millimetres and the shapes drawn on it.

Shapes are evaluated inside their bounding index box only (``Box``: i0, i1, j0, j1, k0, k1, half-open), so
drawing a small organ never touches the whole volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TEMPLATE_FOV_MM: tuple[float, float, float] = (360.0, 360.0, 260.0)

Vec3 = tuple[float, float, float]
Box = tuple[int, int, int, int, int, int]  # i0, i1, j0, j1, k0, k1 (half-open)


class Grid:
    """Voxel-centre coordinates of a RAS-ordered array in template millimetres."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        """Precompute the 1-D template coordinates of the voxel centres along each axis."""
        self.shape = shape
        self.coords = [
            ((np.arange(n, dtype=np.float32) + np.float32(0.5)) * np.float32(t / n) - np.float32(t / 2))
            for n, t in zip(shape, TEMPLATE_FOV_MM, strict=True)
        ]

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> Box | None:
        """Index box of the voxels whose centres lie within [lo, hi] (template mm), or None if empty."""
        out: list[int] = []
        for n, t, a, b in zip(self.shape, TEMPLATE_FOV_MM, lo, hi, strict=True):
            i0 = max(0, math.ceil((a + t / 2) * n / t - 0.5))
            i1 = min(n, math.floor((b + t / 2) * n / t - 0.5) + 1)
            if i0 >= i1:
                return None
            out += [i0, i1]
        return (out[0], out[1], out[2], out[3], out[4], out[5])

    def axes(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open-grid (broadcastable) template coordinates of a box."""
        i0, i1, j0, j1, k0, k1 = box
        return (
            self.coords[0][i0:i1, None, None],
            self.coords[1][None, j0:j1, None],
            self.coords[2][None, None, k0:k1],
        )


def box_slices(box: Box) -> tuple[slice, slice, slice]:
    """Slices of an index box."""
    return (slice(box[0], box[1]), slice(box[2], box[3]), slice(box[4], box[5]))


def union(a: Box | None, b: Box | None) -> Box | None:
    """Smallest box containing both boxes."""
    if a is None:
        return b
    if b is None:
        return a
    return (
        min(a[0], b[0]),
        max(a[1], b[1]),
        min(a[2], b[2]),
        max(a[3], b[3]),
        min(a[4], b[4]),
        max(a[5], b[5]),
    )


def ellipsoid(grid: Grid, center: Vec3, semi: Vec3, rot_z_deg: float = 0.0) -> tuple[Box, np.ndarray] | None:
    """Mask of an ellipsoid (optionally rotated about z) evaluated inside its bounding box only."""
    cx, cy, cz = center
    a, b, c = semi
    r = max(a, b) if rot_z_deg else 0.0
    ex, ey = (r, r) if rot_z_deg else (a, b)
    box = grid.box((cx - ex, cy - ey, cz - c), (cx + ex, cy + ey, cz + c))
    if box is None:
        return None
    x, y, z = grid.axes(box)
    dx, dy, dz = x - np.float32(cx), y - np.float32(cy), z - np.float32(cz)
    if rot_z_deg:
        th = math.radians(rot_z_deg)
        co, si = np.float32(math.cos(th)), np.float32(math.sin(th))
        u = co * dx + si * dy
        v = co * dy - si * dx
        q2 = (u / np.float32(a)) ** 2 + (v / np.float32(b)) ** 2
    else:
        q2 = (dx / np.float32(a)) ** 2 + (dy / np.float32(b)) ** 2
    return box, (q2 + (dz / np.float32(c)) ** 2) <= 1.0


def ellipse_2d(grid: Grid, center: tuple[float, float], semi: tuple[float, float]) -> np.ndarray:
    """Full-plane (X, Y) boolean mask of an axial ellipse."""
    x = grid.coords[0][:, None]
    y = grid.coords[1][None, :]
    return ((x - np.float32(center[0])) / np.float32(semi[0])) ** 2 + (
        (y - np.float32(center[1])) / np.float32(semi[1])
    ) ** 2 <= 1.0


def cylinder_z(
    grid: Grid, center: tuple[float, float], radius: float, z_range: tuple[float, float]
) -> tuple[Box, np.ndarray] | None:
    """Mask of a circular cylinder along z inside its bounding box."""
    cx, cy = center
    box = grid.box((cx - radius, cy - radius, z_range[0]), (cx + radius, cy + radius, z_range[1]))
    if box is None:
        return None
    x, y, _ = grid.axes(box)
    disc = (x - np.float32(cx)) ** 2 + (y - np.float32(cy)) ** 2 <= np.float32(radius * radius)
    return box, np.broadcast_to(disc, (box[1] - box[0], box[3] - box[2], box[5] - box[4]))


def tube(grid: Grid, points: Sequence[Vec3], radii: Sequence[float]) -> tuple[Box, np.ndarray] | None:
    """Mask of a tapered tube through ``points`` (radius interpolated along each segment)."""
    pts = np.asarray(points, dtype=np.float64)
    rmax = max(radii)
    box = grid.box(tuple(pts.min(axis=0) - rmax), tuple(pts.max(axis=0) + rmax))
    if box is None:
        return None
    out = np.zeros((box[1] - box[0], box[3] - box[2], box[5] - box[4]), dtype=bool)
    for s in range(len(pts) - 1):
        p0, p1 = pts[s], pts[s + 1]
        r0, r1 = radii[s], radii[s + 1]
        rm = max(r0, r1)
        sub = grid.box(tuple(np.minimum(p0, p1) - rm), tuple(np.maximum(p0, p1) + rm))
        if sub is None:
            continue
        sub = (
            max(sub[0], box[0]),
            min(sub[1], box[1]),
            max(sub[2], box[2]),
            min(sub[3], box[3]),
            max(sub[4], box[4]),
            min(sub[5], box[5]),
        )
        if sub[0] >= sub[1] or sub[2] >= sub[3] or sub[4] >= sub[5]:
            continue
        sx, sy, sz = grid.axes(sub)
        d = p1 - p0
        dd = float(d @ d)
        ax, ay, az = sx - np.float32(p0[0]), sy - np.float32(p0[1]), sz - np.float32(p0[2])
        t = (ax * np.float32(d[0]) + ay * np.float32(d[1]) + az * np.float32(d[2])) / np.float32(dd)
        np.clip(t, 0.0, 1.0, out=t)
        ex = ax - t * np.float32(d[0])
        ex *= ex
        ey = ay - t * np.float32(d[1])
        ey *= ey
        ex += ey
        del ey
        ez = az - t * np.float32(d[2])
        ez *= ez
        ex += ez
        del ez
        rad = np.float32(r0) + t * np.float32(r1 - r0)
        rad *= rad
        inside = ex <= rad
        rel = (
            slice(sub[0] - box[0], sub[1] - box[0]),
            slice(sub[2] - box[2], sub[3] - box[2]),
            slice(sub[4] - box[4], sub[5] - box[4]),
        )
        out[rel] |= inside
    return box, out


def jitter(rng: np.random.Generator, v: Vec3, mm: float) -> Vec3:
    """Jitter a point uniformly by up to ``mm`` per axis."""
    d = rng.uniform(-mm, mm, size=3)
    return (v[0] + float(d[0]), v[1] + float(d[1]), v[2] + float(d[2]))


def scale(rng: np.random.Generator, v: Vec3, frac: float = 0.1) -> Vec3:
    """Scale semi-axes by one random factor in [1 - frac, 1 + frac]."""
    f = float(rng.uniform(1.0 - frac, 1.0 + frac))
    return (v[0] * f, v[1] * f, v[2] * f)
