"""Deterministic synthetic abdominal CT phantoms with PanTS-named ground-truth masks.

Geometry
--------
The anatomy is described in millimetres of a fixed *template* field of view (``TEMPLATE_FOV_MM``,
x/y/z in RAS+ patient space, origin at the volume centre). It is stretched per axis onto the real field of
view (``shape * spacing``), so any shape/spacing draws the same anatomy and the body ellipse always fills
most of the axial FOV. Because of this the drawn anatomy depends on the array shape only; the spacing only
sets the affine.

The template's x axis points to the patient's LEFT (template +y anterior, +z superior), so the anatomy is
rasterised into an LAS-ordered array: in RAS+ world coordinates (nibabel's convention, +x = patient right)
the liver lies at +x, the spleen and the left kidney and lung at -x, the lungs at the top (+z).

Orientation
-----------
The anatomy is always rasterised in RAS order and then stored with the requested axis codes (``"LPS"``,
``"IPL"``, ...). ``shape`` and ``spacing`` are given in the *output* axis order, so an ``"IPL"`` phantom of
shape ``(Z, Y, X)`` is, after ``nibabel.as_closest_canonical``, identical (voxels, masks and affine) to the
``"RAS"`` phantom of shape ``(X, Y, Z)`` with the permuted spacing and the same seed.

Masks
-----
``Phantom.masks`` holds every name of ``PHANTOM_STRUCTURES``; ``pancreatic_lesion`` is all-False when the
phantom has no lesion. Organs are mutually exclusive (drawn by priority), except: ``pancreas`` is the union
of ``pancreas_head``/``pancreas_body``/``pancreas_tail`` (disjoint, split along x) and
``pancreatic_lesion`` (which replaces pancreas tissue inside one part); ``veins`` (portal and splenic vein)
may overlap the liver, as PanTS veins overlap organs. The same seed draws the same anatomy with or without a
lesion.

Dataset writer
--------------
``write_pants_dataset`` takes ``shape``/``spacing`` of the RAS-canonical volume; a case stored in another
orientation has its array axes (and spacing) permuted accordingly, so every case holds the same anatomy.
Each case uses its own seed derived from ``(seed, case index)``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

__all__ = [
    "METADATA_COLUMNS",
    "PHANTOM_STRUCTURES",
    "TEMPLATE_FOV_MM",
    "Phantom",
    "generate_phantom",
    "write_pants_dataset",
]

TEMPLATE_FOV_MM: tuple[float, float, float] = (360.0, 360.0, 260.0)

PHANTOM_STRUCTURES: tuple[str, ...] = (
    "aorta",
    "duodenum",
    "gall_bladder",
    "kidney_left",
    "kidney_right",
    "liver",
    "lung_left",
    "lung_right",
    "pancreas",
    "pancreas_body",
    "pancreas_head",
    "pancreas_tail",
    "pancreatic_lesion",
    "postcava",
    "spleen",
    "stomach",
    "veins",
)

METADATA_COLUMNS: tuple[str, ...] = (
    "BDMAP ID",
    "shape",
    "spacing",
    "ct phase",
    "sex",
    "age",
    "manufacturer",
    "manufacturer model",
    "study type",
    "site",
    "site detail",
    "site nationality",
    "study year",
    "tumor?",
    "number of pancreatic lesion instances",
)

# --- tissue labels of the internal label map (uint8); ids >= _CAVITY may be painted over by organs ---
_AIR, _SUBQ_FAT, _MUSCLE, _BONE, _CAVITY = 0, 1, 2, 3, 4
_LUNG_L, _LUNG_R, _LIVER, _SPLEEN = 5, 6, 7, 8
_KL_CORTEX, _KL_MEDULLA, _KR_CORTEX, _KR_MEDULLA = 9, 10, 11, 12
_STOMACH_FLUID, _STOMACH_GAS, _GALL, _DUODENUM = 13, 14, 15, 16
_P_HEAD, _P_BODY, _P_TAIL = 17, 18, 19
_L_HEAD, _L_BODY, _L_TAIL = 20, 21, 22
_AORTA, _POSTCAVA = 23, 24
_N_LABELS = 25

_BASE_HU: dict[int, int] = {
    _AIR: -1000,
    _SUBQ_FAT: -100,
    _MUSCLE: 50,
    _BONE: 400,
    _CAVITY: -100,
    _LUNG_L: -800,
    _LUNG_R: -800,
    _LIVER: 60,
    _SPLEEN: 50,
    _KL_CORTEX: 150,
    _KL_MEDULLA: 30,
    _KR_CORTEX: 150,
    _KR_MEDULLA: 30,
    _STOMACH_FLUID: 20,
    _STOMACH_GAS: -950,
    _GALL: 5,
    _DUODENUM: 30,
    _P_HEAD: 40,
    _P_BODY: 40,
    _P_TAIL: 40,
    _AORTA: 150,
    _POSTCAVA: 150,
}
_VEIN_HU = 150

# structure name -> label ids forming it (veins are drawn as a separate overlay, see generate_phantom)
_STRUCTURE_LABELS: dict[str, tuple[int, ...]] = {
    "aorta": (_AORTA,),
    "duodenum": (_DUODENUM,),
    "gall_bladder": (_GALL,),
    "kidney_left": (_KL_CORTEX, _KL_MEDULLA),
    "kidney_right": (_KR_CORTEX, _KR_MEDULLA),
    "liver": (_LIVER,),
    "lung_left": (_LUNG_L,),
    "lung_right": (_LUNG_R,),
    "pancreas": (_P_HEAD, _P_BODY, _P_TAIL, _L_HEAD, _L_BODY, _L_TAIL),
    "pancreas_body": (_P_BODY, _L_BODY),
    "pancreas_head": (_P_HEAD, _L_HEAD),
    "pancreas_tail": (_P_TAIL, _L_TAIL),
    "pancreatic_lesion": (_L_HEAD, _L_BODY, _L_TAIL),
    "postcava": (_POSTCAVA,),
    "spleen": (_SPLEEN,),
    "stomach": (_STOMACH_FLUID, _STOMACH_GAS),
}
_LABEL_TO_STRUCTURE: dict[int, str] = {
    _AORTA: "aorta",
    _DUODENUM: "duodenum",
    _GALL: "gall_bladder",
    _KL_CORTEX: "kidney_left",
    _KL_MEDULLA: "kidney_left",
    _KR_CORTEX: "kidney_right",
    _KR_MEDULLA: "kidney_right",
    _LIVER: "liver",
    _LUNG_L: "lung_left",
    _LUNG_R: "lung_right",
    _P_HEAD: "pancreas",
    _P_BODY: "pancreas",
    _P_TAIL: "pancreas",
    _L_HEAD: "pancreas",
    _L_BODY: "pancreas",
    _L_TAIL: "pancreas",
    _POSTCAVA: "postcava",
    _SPLEEN: "spleen",
    _STOMACH_FLUID: "stomach",
    _STOMACH_GAS: "stomach",
}

Vec3 = tuple[float, float, float]
Box = tuple[int, int, int, int, int, int]  # i0, i1, j0, j1, k0, k1 (half-open)


@dataclass(frozen=True)
class Phantom:
    """A synthetic CT volume (int16 HU), its voxel->world affine and one boolean mask per structure."""

    volume: np.ndarray
    affine: np.ndarray
    masks: dict[str, np.ndarray]
    has_lesion: bool


class _Grid:
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


def _sl(box: Box) -> tuple[slice, slice, slice]:
    """Slices of an index box."""
    return (slice(box[0], box[1]), slice(box[2], box[3]), slice(box[4], box[5]))


def _union(a: Box | None, b: Box | None) -> Box | None:
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


def _ellipsoid(grid: _Grid, center: Vec3, semi: Vec3, rot_z_deg: float = 0.0) -> tuple[Box, np.ndarray] | None:
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


def _ellipse_2d(grid: _Grid, center: tuple[float, float], semi: tuple[float, float]) -> np.ndarray:
    """Full-plane (X, Y) boolean mask of an axial ellipse."""
    x = grid.coords[0][:, None]
    y = grid.coords[1][None, :]
    return ((x - np.float32(center[0])) / np.float32(semi[0])) ** 2 + (
        (y - np.float32(center[1])) / np.float32(semi[1])
    ) ** 2 <= 1.0


def _cylinder_z(
    grid: _Grid, center: tuple[float, float], radius: float, z_range: tuple[float, float]
) -> tuple[Box, np.ndarray] | None:
    """Mask of a circular cylinder along z inside its bounding box."""
    cx, cy = center
    box = grid.box((cx - radius, cy - radius, z_range[0]), (cx + radius, cy + radius, z_range[1]))
    if box is None:
        return None
    x, y, _ = grid.axes(box)
    disc = (x - np.float32(cx)) ** 2 + (y - np.float32(cy)) ** 2 <= np.float32(radius * radius)
    return box, np.broadcast_to(disc, (box[1] - box[0], box[3] - box[2], box[5] - box[4]))


def _tube(grid: _Grid, points: Sequence[Vec3], radii: Sequence[float]) -> tuple[Box, np.ndarray] | None:
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


class _Painter:
    """Priority painter of the label map; later paints win, organs never paint over the body wall."""

    def __init__(self, label: np.ndarray) -> None:
        """Wrap a label map and start with no structure boxes."""
        self.label = label
        self.boxes: dict[str, Box | None] = {}

    def paint(self, shape: tuple[Box, np.ndarray] | None, label_id: int) -> None:
        """Paint ``label_id`` where the shape is inside the body cavity."""
        if shape is None:
            return
        box, mask = shape
        sub = self.label[_sl(box)]
        sub[mask & (sub >= _CAVITY)] = label_id
        name = _LABEL_TO_STRUCTURE.get(label_id)
        if name is not None:
            self.boxes[name] = _union(self.boxes.get(name), box)


def _jit(rng: np.random.Generator, v: Vec3, mm: float) -> Vec3:
    """Jitter a point uniformly by up to ``mm`` per axis."""
    d = rng.uniform(-mm, mm, size=3)
    return (v[0] + float(d[0]), v[1] + float(d[1]), v[2] + float(d[2]))


def _scl(rng: np.random.Generator, v: Vec3, frac: float = 0.1) -> Vec3:
    """Scale semi-axes by one random factor in [1 - frac, 1 + frac]."""
    f = float(rng.uniform(1.0 - frac, 1.0 + frac))
    return (v[0] * f, v[1] * f, v[2] * f)


def _parse_orientation(orientation: str) -> tuple[str, str, str]:
    """Validate a 3-letter axis code such as 'RAS', 'LPS' or 'IPL'."""
    code = orientation.upper()
    groups = ("LR", "AP", "SI")
    axes = sorted(g for c in code for g, letters in enumerate(groups) if c in letters)
    if len(code) != 3 or axes != [0, 1, 2]:
        raise ValueError(f"orientation must be a 3-letter axis code like 'RAS' or 'LPS', got {orientation!r}")
    return (code[0], code[1], code[2])


def generate_phantom(
    shape: Sequence[int] = (128, 128, 64),
    spacing: Sequence[float] = (1.5, 1.5, 2.5),
    seed: int = 0,
    lesion: bool = True,
    orientation: str = "RAS",
    noise_hu: float = 10.0,
) -> Phantom:
    """Draw a deterministic abdominal CT phantom; shape and spacing are in the output axis order."""
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError("shape and spacing must have three entries")
    if min(shape) < 1 or min(spacing) <= 0:
        raise ValueError("shape entries must be >= 1 and spacing entries > 0")
    if noise_hu < 0:
        raise ValueError("noise_hu must be >= 0")
    codes = _parse_orientation(orientation)
    out_ornt = axcodes2ornt(codes)
    # The drawn array's first axis runs towards the patient's left (template +x), i.e. it is LAS-ordered.
    drawn_ornt = axcodes2ornt(("L", "A", "S"))
    ras_shape = [0, 0, 0]
    ras_spacing = [0.0, 0.0, 0.0]
    for out_axis, (ras_axis, _flip) in enumerate(out_ornt):
        ras_shape[int(ras_axis)] = int(shape[out_axis])
        ras_spacing[int(ras_axis)] = float(spacing[out_axis])
    rshape = (ras_shape[0], ras_shape[1], ras_shape[2])

    rng = np.random.default_rng(seed)
    grid = _Grid(rshape)
    label, boxes, veins_box, veins_sub, lesion_hu = _draw_anatomy(grid, rng, lesion)

    lut = np.array([_BASE_HU.get(i, 0) for i in range(_N_LABELS)], dtype=np.int16)
    for lid in (_L_HEAD, _L_BODY, _L_TAIL):
        lut[lid] = lesion_hu
    volume = lut[label]
    if veins_box is not None:
        volume[_sl(veins_box)][veins_sub] = _VEIN_HU
    if noise_hu > 0:
        _add_noise(volume, rng, float(noise_hu))

    drawn_affine = np.eye(4, dtype=np.float64)
    for ax in range(3):
        drawn_affine[ax, ax] = ras_spacing[ax]
        drawn_affine[ax, 3] = -(rshape[ax] - 1) / 2.0 * ras_spacing[ax]
    # LAS: world x decreases along the first array axis; the volume stays centred on the origin.
    drawn_affine[0, 0] = -drawn_affine[0, 0]
    drawn_affine[0, 3] = -drawn_affine[0, 3]
    transform: np.ndarray | None
    if codes == ("L", "A", "S"):
        transform = None
        affine = drawn_affine
    else:
        transform = ornt_transform(drawn_ornt, out_ornt)
        affine = drawn_affine @ inv_ornt_aff(transform, rshape)
        volume = np.ascontiguousarray(apply_orientation(volume, transform))

    # Each mask is computed inside its RAS box and placed straight into the output orientation, so untouched
    # zero pages of the (calloc'ed) mask arrays are never written.
    parts: dict[str, tuple[Box, np.ndarray]] = {}
    for name in PHANTOM_STRUCTURES:
        if name == "veins":
            if veins_box is not None:
                parts[name] = (veins_box, veins_sub)
            continue
        key = "pancreas" if name.startswith("pancrea") else name
        box = boxes.get(key)
        if box is None:
            continue
        ids = _STRUCTURE_LABELS[name]
        sub = label[_sl(box)]
        parts[name] = (box, sub == ids[0] if len(ids) == 1 else np.isin(sub, ids))
    del label

    masks: dict[str, np.ndarray] = {}
    for name in PHANTOM_STRUCTURES:
        m = np.zeros(volume.shape, dtype=bool)
        if name in parts:
            box, sub = parts.pop(name)
            if transform is None:
                m[_sl(box)] = sub
            else:
                m[_sl(_reorient_box(box, rshape, transform))] = apply_orientation(sub, transform)
        masks[name] = m
    return Phantom(volume=volume, affine=affine, masks=masks, has_lesion=bool(lesion))


def _reorient_box(box: Box, ras_shape: tuple[int, int, int], transform: np.ndarray) -> Box:
    """Where a RAS index box lands after ``apply_orientation(..., transform)``."""
    out = [0, 0, 0, 0, 0, 0]
    for in_axis, (out_axis, flip) in enumerate(transform):
        a0, a1 = box[2 * in_axis], box[2 * in_axis + 1]
        if flip < 0:
            a0, a1 = ras_shape[in_axis] - a1, ras_shape[in_axis] - a0
        o = int(out_axis)
        out[2 * o], out[2 * o + 1] = a0, a1
    return (out[0], out[1], out[2], out[3], out[4], out[5])


def _draw_anatomy(
    grid: _Grid, rng: np.random.Generator, lesion: bool
) -> tuple[np.ndarray, dict[str, Box | None], Box | None, np.ndarray, int]:
    """Rasterise the template anatomy into a RAS label map plus a separate vein mask."""
    nx, ny, nz = grid.shape
    # All random draws happen here, in a fixed order, whether or not a lesion is drawn.
    body_scale = float(rng.uniform(0.95, 1.02))
    organ_scale = {
        name: _scl(rng, (1.0, 1.0, 1.0))
        for name in ("lung_l", "lung_r", "liver", "spleen", "stomach", "gall", "kid_l", "kid_r")
    }
    organ_shift = {name: _jit(rng, (0.0, 0.0, 0.0), 3.0) for name in organ_scale}
    panc_pts: list[Vec3] = [
        _jit(rng, p, 3.0) for p in [(-35.0, 0.0, -20.0), (-5.0, 5.0, -10.0), (30.0, 0.0, -2.0), (68.0, -20.0, 10.0)]
    ]
    panc_r = [r * float(rng.uniform(0.9, 1.1)) for r in (16.0, 12.5, 12.0, 10.0)]
    cut_head_body = -18.0 + float(rng.uniform(-3, 3))
    cut_body_tail = 45.0 + float(rng.uniform(-3, 3))
    lesion_part = int(rng.choice(3, p=[0.6, 0.25, 0.15]))
    lesion_u = float(rng.uniform(-0.15, 0.15))
    lesion_jit = _jit(rng, (0.0, 0.0, 0.0), 2.0)
    lesion_r = float(rng.uniform(9.0, 14.0))
    lesion_hu = int(rng.integers(10, 21))
    vessel_shift = _jit(rng, (0.0, 0.0, 0.0), 2.0)

    def organ(name: str, center: Vec3, semi: Vec3) -> tuple[Vec3, Vec3]:
        s, d = organ_scale[name], organ_shift[name]
        return (
            (center[0] + d[0], center[1] + d[1], center[2] + d[2]),
            (semi[0] * s[0], semi[1] * s[1], semi[2] * s[2]),
        )

    # --- body wall: 2-D cross-section, constant along z ---
    plane = np.full((nx, ny), _AIR, dtype=np.uint8)
    b = body_scale
    plane[_ellipse_2d(grid, (0.0, 0.0), (172.0 * b, 138.0 * b))] = _SUBQ_FAT
    plane[_ellipse_2d(grid, (0.0, 0.0), (157.0 * b, 123.0 * b))] = _MUSCLE
    plane[_ellipse_2d(grid, (0.0, 0.0), (145.0 * b, 111.0 * b))] = _CAVITY
    for side in (-1.0, 1.0):
        plane[_ellipse_2d(grid, (30.0 * side, -101.0 * b), (24.0, 17.0))] = _MUSCLE
    plane[_ellipse_2d(grid, (0.0, -76.0 * b), (18.0, 18.0))] = _BONE
    label = np.empty((nx, ny, nz), dtype=np.uint8)
    label[...] = plane[:, :, None]
    del plane

    p = _Painter(label)
    vs = vessel_shift

    # --- lungs at the top of the field of view ---
    p.paint(_ellipsoid(grid, *organ("lung_r", (-70.0, -10.0, 150.0), (62.0, 78.0, 92.0))), _LUNG_R)
    p.paint(_ellipsoid(grid, *organ("lung_l", (70.0, -10.0, 150.0), (58.0, 78.0, 88.0))), _LUNG_L)
    # --- liver: right lobe + left lobe extension ---
    c, s = organ("liver", (-65.0, 5.0, 55.0), (75.0, 85.0, 70.0))
    p.paint(_ellipsoid(grid, c, s, rot_z_deg=-10.0), _LIVER)
    c2, s2 = organ("liver", (5.0, 45.0, 62.0), (45.0, 33.0, 30.0))
    p.paint(_ellipsoid(grid, c2, s2, rot_z_deg=15.0), _LIVER)
    # --- gall bladder in the liver fossa ---
    p.paint(_ellipsoid(grid, *organ("gall", (-42.0, 48.0, 15.0), (14.0, 14.0, 27.0)), rot_z_deg=20.0), _GALL)
    # --- spleen, posterior left ---
    p.paint(_ellipsoid(grid, *organ("spleen", (88.0, -38.0, 50.0), (32.0, 50.0, 55.0)), rot_z_deg=35.0), _SPLEEN)
    # --- stomach (fluid, gas anteriorly since the patient is supine) ---
    c, s = organ("stomach", (50.0, 22.0, 52.0), (40.0, 34.0, 44.0))
    st = _ellipsoid(grid, c, s, rot_z_deg=-25.0)
    p.paint(st, _STOMACH_FLUID)
    if st is not None:
        box, m = st
        _, y, _ = grid.axes(box)
        p.paint((box, m & (y > np.float32(c[1] + 0.45 * s[1]))), _STOMACH_GAS)
    # --- kidneys (cortex shell + medulla), posterior-lateral; right one lower ---
    for name, cx, cz, rot, cortex, medulla in (
        ("kid_r", -62.0, -38.0, -20.0, _KR_CORTEX, _KR_MEDULLA),
        ("kid_l", 62.0, -28.0, 20.0, _KL_CORTEX, _KL_MEDULLA),
    ):
        c, s = organ(name, (cx, -55.0, cz), (27.0, 24.0, 50.0))
        p.paint(_ellipsoid(grid, c, s, rot_z_deg=rot), cortex)
        p.paint(_ellipsoid(grid, c, (s[0] * 0.68, s[1] * 0.68, s[2] * 0.8), rot_z_deg=rot), medulla)
    # --- duodenum: C-loop around the pancreatic head ---
    d_pts: list[Vec3] = [(-35.0, 15.0, 2.0), (-60.0, 8.0, -18.0), (-50.0, 0.0, -45.0), (-12.0, -2.0, -52.0)]
    p.paint(_tube(grid, [(q[0] + vs[0], q[1] + vs[1], q[2] + vs[2]) for q in d_pts], [10.0] * 4), _DUODENUM)
    # --- pancreas head/body/tail, partitioned along x; lesion inside ---
    tube = _tube(grid, panc_pts, panc_r)
    lesion_center: Vec3 | None = None
    lesion_label = (_L_HEAD, _L_BODY, _L_TAIL)[lesion_part]
    if tube is not None:
        box, m = tube
        x, y, z = grid.axes(box)
        part = np.where(
            x < np.float32(cut_head_body), _P_HEAD, np.where(x < np.float32(cut_body_tail), _P_BODY, _P_TAIL)
        )
        part = np.broadcast_to(part.astype(np.uint8), m.shape)
        sub = label[_sl(box)]
        ok = m & (sub >= _CAVITY)
        sub[ok] = part[ok]
        p.boxes["pancreas"] = _union(p.boxes.get("pancreas"), box)
        if lesion:
            lo = panc_pts[0][0] - panc_r[0]
            hi = panc_pts[-1][0] + panc_r[-1]
            bounds = [lo, cut_head_body, cut_body_tail, hi]
            a, bnd = bounds[lesion_part], bounds[lesion_part + 1]
            half = (bnd - a) / 2.0
            lx = (a + bnd) / 2.0 + lesion_u * half
            lr = min(lesion_r, max(3.0, half - abs(lesion_u) * half - 1.0))
            ly, lz = _centerline_yz(panc_pts, lx)
            lesion_center = (lx + lesion_jit[0], ly + lesion_jit[1], lz + lesion_jit[2])
            dx = x - np.float32(lesion_center[0])
            dy = y - np.float32(lesion_center[1])
            dz = z - np.float32(lesion_center[2])
            sphere = dx * dx + dy * dy + dz * dz <= np.float32(lr * lr)
            les = ok & sphere & (part == (_P_HEAD, _P_BODY, _P_TAIL)[lesion_part])
            sub[les] = lesion_label
    # --- great vessels (painted last among labelled structures) ---
    p.paint(_cylinder_z(grid, (10.0 + vs[0], -40.0 + vs[1]), 10.0, (-200.0, 200.0)), _AORTA)
    p.paint(_cylinder_z(grid, (-22.0 + vs[0], -35.0 + vs[1]), 11.0, (-200.0, 200.0)), _POSTCAVA)

    pbox = p.boxes.get("pancreas")
    if lesion and lesion_center is not None and pbox is not None:
        psub = label[_sl(pbox)]
        if not np.isin(psub, (_L_HEAD, _L_BODY, _L_TAIL)).any():
            # Tiny volumes: keep at least one lesion voxel, the pancreas voxel (of the chosen part if any)
            # nearest to the intended centre; with no pancreas voxel at all, the voxel nearest the centre.
            cand = np.argwhere(psub == (_P_HEAD, _P_BODY, _P_TAIL)[lesion_part])
            if len(cand) == 0:
                cand = np.argwhere(np.isin(psub, (_P_HEAD, _P_BODY, _P_TAIL)))
            if len(cand):
                cand += np.array([pbox[0], pbox[2], pbox[4]])
                pos = np.stack([grid.coords[ax][cand[:, ax]] for ax in range(3)], axis=1)
                near = cand[int(np.argmin(((pos - np.asarray(lesion_center, dtype=np.float32)) ** 2).sum(axis=1)))]
                idx = (int(near[0]), int(near[1]), int(near[2]))
                label[idx] = label[idx] + (_L_HEAD - _P_HEAD)
            else:
                idx = (
                    int(np.argmin(np.abs(grid.coords[0] - np.float32(lesion_center[0])))),
                    int(np.argmin(np.abs(grid.coords[1] - np.float32(lesion_center[1])))),
                    int(np.argmin(np.abs(grid.coords[2] - np.float32(lesion_center[2])))),
                )
                label[idx] = lesion_label
                p.boxes["pancreas"] = _union(pbox, (idx[0], idx[0] + 1, idx[1], idx[1] + 1, idx[2], idx[2] + 1))

    # --- veins: portal vein (into the liver hilum) and splenic vein, an overlay that may touch organs ---
    v_pts: list[Vec3] = [(70.0, -36.0, 14.0), (-10.0, -12.0, -5.0), (-45.0, -5.0, 35.0), (-70.0, 0.0, 50.0)]
    veins_shape = _tube(grid, [(q[0] + vs[0], q[1] + vs[1], q[2] + vs[2]) for q in v_pts], [5.5, 6.5, 7.0, 5.0])
    veins_box: Box | None = None
    veins_sub = np.zeros((0, 0, 0), dtype=bool)
    if veins_shape is not None:
        veins_box, vm = veins_shape
        vsub = label[_sl(veins_box)]
        # Veins stay inside the cavity and off the pancreas, the lesion and the great vessels.
        veins_sub = vm & (vsub >= _CAVITY) & ((vsub < _P_HEAD) | (vsub > _POSTCAVA))
    return label, p.boxes, veins_box, veins_sub, lesion_hu


def _centerline_yz(points: Sequence[Vec3], x: float) -> tuple[float, float]:
    """y and z of a polyline (monotonic in x) at a given x."""
    xs = [q[0] for q in points]
    ys = [q[1] for q in points]
    zs = [q[2] for q in points]
    return float(np.interp(x, xs, ys)), float(np.interp(x, xs, zs))


def _add_noise(volume: np.ndarray, rng: np.random.Generator, std: float) -> None:
    """Add rounded Gaussian noise in place, slab by slab along the first axis to bound memory."""
    nx = volume.shape[0]
    per_slab = max(1, volume.shape[1] * volume.shape[2])
    step = max(1, (4 << 20) // per_slab)
    for i0 in range(0, nx, step):
        slab = volume[i0 : i0 + step]
        noise = rng.standard_normal(slab.shape, dtype=np.float32)
        noise *= np.float32(std)
        noise += slab
        np.rint(noise, out=noise)
        np.clip(noise, -32768, 32767, out=noise)
        slab[...] = noise


# --------------------------------------------------------------------------------------------------
# PanTS-layout dataset writer
# --------------------------------------------------------------------------------------------------

_MANUFACTURERS = ("SIEMENS", "Siemens Healthineers", "siemens", "Siemens", "", "SIEMENS ", "")
_MODELS = ("SOMATOM Definition AS+", "Sensation 64", "SOMATOM Force", "SOMATOM Definition Flash", "")
_SEXES = ("M", "F", " F", "M ", "F", "M", "")
_PHASES = ("Venous", "Venous", "Venous", "Arterial", "Delay", "Non-contrast", "")
_STUDY_TYPES = ("CT ABDOMEN PELVIS W CONTRAST", "CT ABD/PELVIS W IV CONTRAST", "CT PANCREAS PROTOCOL", "")
_SITES = (
    ("JHH", "Johns Hopkins Hospital", "US"),
    ("MSD", "Medical Segmentation Decathlon; Memorial Sloan Kettering Cancer Center", "US"),
    ("EU-MC", "Charite Berlin; Universitatsklinikum Erlangen", "DE;NL"),
)
_STUDY_YEARS = ("2016", "2012; 2016; 2020", "06.2016-04.2021", "", "2019")


def _case_seed(seed: int, index: int) -> int:
    """Independent deterministic seed of one case."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _tuple_str(values: Sequence[float] | Sequence[int]) -> str:
    """Python tuple string of numbers, as the PanTS metadata writes them: '(512, 333, 200)'."""
    return "(" + ", ".join(str(v) for v in values) + ")"


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write an array as NIfTI-1 with scanner sform/qform and millimetre units."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def write_pants_dataset(
    root: Path,
    n_cases: int,
    shape: Sequence[int] = (96, 96, 48),
    spacing: Sequence[float] = (2.0, 2.0, 3.0),
    seed: int = 0,
    split: str = "Tr",
    tumor_fraction: float = 0.5,
    missing_structure: dict[int, str] | None = None,
    float_masks_cases: set[int] | None = None,
    orientations: dict[int, str] | None = None,
    metadata_format: str = "csv",
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Write ``n_cases`` phantoms in the PanTS layout plus a metadata table; returns the case ids."""
    if split not in ("Tr", "Te"):
        raise ValueError("split must be 'Tr' or 'Te'")
    if metadata_format not in ("csv", "xlsx"):
        raise ValueError("metadata_format must be 'csv' or 'xlsx'")
    if not 0.0 <= tumor_fraction <= 1.0:
        raise ValueError("tumor_fraction must be within [0, 1]")
    missing_structure = dict(missing_structure or {})
    for name in missing_structure.values():
        if name not in PHANTOM_STRUCTURES:
            raise ValueError(f"unknown structure {name!r}")
    float_masks_cases = set(float_masks_cases or set())
    orientations = dict(orientations or {})
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(np.random.SeedSequence([seed, 1_000_003]))
    n_tumor = math.floor(n_cases * tumor_fraction + 0.5)
    tumor_cases = {int(i) for i in rng.permutation(n_cases)[:n_tumor]}

    rows: list[dict[str, str | int | None]] = []
    case_ids: list[str] = []
    for idx in range(n_cases):
        case_id = f"PanTS_{idx + 1:08d}"
        case_ids.append(case_id)
        code = _parse_orientation(orientations.get(idx, "RAS"))
        ornt = axcodes2ornt(code)
        out_shape = tuple(int(shape[int(ax)]) for ax, _ in ornt)
        out_spacing = tuple(float(spacing[int(ax)]) for ax, _ in ornt)
        tumor = idx in tumor_cases
        ph = generate_phantom(
            out_shape, out_spacing, seed=_case_seed(seed, idx), lesion=tumor, orientation="".join(code)
        )
        _save_nifti(ph.volume, ph.affine, root / f"Image{split}" / case_id / "ct.nii.gz")
        seg_dir = root / f"Label{split}" / case_id / "segmentations"
        seg_dir.mkdir(parents=True, exist_ok=True)
        for name in PHANTOM_STRUCTURES:
            if missing_structure.get(idx) == name:
                continue
            mask = ph.masks[name]
            data = mask.astype(np.float32) * np.float32(0.9999) if idx in float_masks_cases else mask.astype(np.uint8)
            _save_nifti(data, ph.affine, seg_dir / f"{name}.nii.gz")

        site = _SITES[int(rng.integers(len(_SITES)))]
        age_blank = rng.random() < 0.1
        age = int(rng.integers(25, 90))
        rows.append(
            {
                "BDMAP ID": case_id,
                "shape": _tuple_str(ph.volume.shape),
                "spacing": _tuple_str(out_spacing),
                "ct phase": _PHASES[int(rng.integers(len(_PHASES)))],
                "sex": _SEXES[int(rng.integers(len(_SEXES)))],
                "age": None if age_blank else age,
                "manufacturer": _MANUFACTURERS[int(rng.integers(len(_MANUFACTURERS)))],
                "manufacturer model": _MODELS[int(rng.integers(len(_MODELS)))],
                "study type": _STUDY_TYPES[int(rng.integers(len(_STUDY_TYPES)))],
                "site": site[0],
                "site detail": site[1],
                "site nationality": site[2],
                "study year": _STUDY_YEARS[int(rng.integers(len(_STUDY_YEARS)))],
                "tumor?": 1 if tumor else 0,
                "number of pancreatic lesion instances": 1 if ph.masks["pancreatic_lesion"].any() else 0,
            }
        )
        if progress is not None:
            progress(idx + 1, n_cases)

    if metadata_format == "csv":
        with (root / "metadata.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(METADATA_COLUMNS))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    else:
        from openpyxl import Workbook

        wb = Workbook()
        ws = wb.active
        assert ws is not None
        ws.title = "metadata"
        ws.append(list(METADATA_COLUMNS))
        for row in rows:
            ws.append([row[c] for c in METADATA_COLUMNS])
        wb.save(root / "metadata.xlsx")
    return case_ids
