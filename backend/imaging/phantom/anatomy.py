"""The phantom's anatomy: tissue labels and their HU, the PanTS structures they form, and the drawing.

The anatomy is rasterised into a uint8 label map (one tissue id per voxel); structures and HU are looked up
from it afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from backend.imaging.phantom.geometry import (
    Box,
    Grid,
    Vec3,
    box_slices,
    cylinder_z,
    ellipse_2d,
    ellipsoid,
    jitter,
    scale,
    tube,
    union,
)

if TYPE_CHECKING:
    from backend.imaging.phantom.variation import Variation

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
VEIN_HU = 150

# structure name -> label ids forming it (veins are drawn as a separate overlay, see generate_phantom)
STRUCTURE_LABELS: dict[str, tuple[int, ...]] = {
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


def hu_table(lesion_hu: int) -> np.ndarray:
    """HU of each tissue label (int16 lookup table); the lesion's HU differs per phantom."""
    lut = np.array([_BASE_HU.get(i, 0) for i in range(_N_LABELS)], dtype=np.int16)
    for lid in (_L_HEAD, _L_BODY, _L_TAIL):
        lut[lid] = lesion_hu
    return lut


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
        sub = self.label[box_slices(box)]
        sub[mask & (sub >= _CAVITY)] = label_id
        name = _LABEL_TO_STRUCTURE.get(label_id)
        if name is not None:
            self.boxes[name] = union(self.boxes.get(name), box)


def draw_anatomy(
    grid: Grid, rng: np.random.Generator, lesion: bool, vary: Variation | None = None, duct: bool = False
) -> tuple[np.ndarray, dict[str, Box | None], Box | None, np.ndarray, int, tuple[Box, np.ndarray] | None]:
    """Rasterise the template anatomy into a RAS label map plus separate vein (and, if asked, duct) masks.

    ``vary`` (opt-in shape variation) is applied on top of the default draws, which stay the same, so a phantom
    without it is unchanged.
    """
    nx, ny, nz = grid.shape
    # All random draws happen here, in a fixed order, whether or not a lesion is drawn.
    body_scale = float(rng.uniform(0.95, 1.02))
    organ_scale = {
        name: scale(rng, (1.0, 1.0, 1.0))
        for name in ("lung_l", "lung_r", "liver", "spleen", "stomach", "gall", "kid_l", "kid_r")
    }
    organ_shift = {name: jitter(rng, (0.0, 0.0, 0.0), 3.0) for name in organ_scale}
    panc_pts: list[Vec3] = [
        jitter(rng, p, 3.0) for p in [(-35.0, 0.0, -20.0), (-5.0, 5.0, -10.0), (30.0, 0.0, -2.0), (68.0, -20.0, 10.0)]
    ]
    panc_r = [r * float(rng.uniform(0.9, 1.1)) for r in (16.0, 12.5, 12.0, 10.0)]
    cut_head_body = -18.0 + float(rng.uniform(-3, 3))
    cut_body_tail = 45.0 + float(rng.uniform(-3, 3))
    lesion_part = int(rng.choice(3, p=[0.6, 0.25, 0.15]))
    lesion_u = float(rng.uniform(-0.15, 0.15))
    lesion_jit = jitter(rng, (0.0, 0.0, 0.0), 2.0)
    lesion_r = float(rng.uniform(9.0, 14.0))
    lesion_hu = int(rng.integers(10, 21))
    vessel_shift = jitter(rng, (0.0, 0.0, 0.0), 2.0)
    vessel_r = 1.0
    if vary is not None:
        panc_pts = [(q[0] + d[0], q[1] + d[1], q[2] + d[2]) for q, d in zip(panc_pts, vary.pancreas_shift, strict=True)]
        panc_r = [r * f for r, f in zip(panc_r, vary.pancreas_radius, strict=True)]
        lesion_part, lesion_u, lesion_r = vary.lesion_part, vary.lesion_u, vary.lesion_radius_mm
        lesion_jit = (
            lesion_jit[0] + vary.lesion_offset[0],
            lesion_jit[1] + vary.lesion_offset[1],
            lesion_jit[2] + vary.lesion_offset[2],
        )
        vessel_r = vary.vessel_radius

    def organ(name: str, center: Vec3, semi: Vec3) -> tuple[Vec3, Vec3]:
        s, d = organ_scale[name], organ_shift[name]
        if vary is not None:
            vs_, vd = vary.organ_scale[name], vary.organ_shift[name]
            s = (s[0] * vs_[0], s[1] * vs_[1], s[2] * vs_[2])
            d = (d[0] + vd[0], d[1] + vd[1], d[2] + vd[2])
        return (
            (center[0] + d[0], center[1] + d[1], center[2] + d[2]),
            (semi[0] * s[0], semi[1] * s[1], semi[2] * s[2]),
        )

    # --- body wall: 2-D cross-section, constant along z ---
    plane = np.full((nx, ny), _AIR, dtype=np.uint8)
    b = body_scale
    plane[ellipse_2d(grid, (0.0, 0.0), (172.0 * b, 138.0 * b))] = _SUBQ_FAT
    plane[ellipse_2d(grid, (0.0, 0.0), (157.0 * b, 123.0 * b))] = _MUSCLE
    plane[ellipse_2d(grid, (0.0, 0.0), (145.0 * b, 111.0 * b))] = _CAVITY
    for side in (-1.0, 1.0):
        plane[ellipse_2d(grid, (30.0 * side, -101.0 * b), (24.0, 17.0))] = _MUSCLE
    plane[ellipse_2d(grid, (0.0, -76.0 * b), (18.0, 18.0))] = _BONE
    label = np.empty((nx, ny, nz), dtype=np.uint8)
    label[...] = plane[:, :, None]
    del plane

    p = _Painter(label)
    vs = vessel_shift

    # --- lungs at the top of the field of view ---
    p.paint(ellipsoid(grid, *organ("lung_r", (-70.0, -10.0, 150.0), (62.0, 78.0, 92.0))), _LUNG_R)
    p.paint(ellipsoid(grid, *organ("lung_l", (70.0, -10.0, 150.0), (58.0, 78.0, 88.0))), _LUNG_L)
    # --- liver: right lobe + left lobe extension ---
    c, s = organ("liver", (-65.0, 5.0, 55.0), (75.0, 85.0, 70.0))
    p.paint(ellipsoid(grid, c, s, rot_z_deg=-10.0), _LIVER)
    c2, s2 = organ("liver", (5.0, 45.0, 62.0), (45.0, 33.0, 30.0))
    p.paint(ellipsoid(grid, c2, s2, rot_z_deg=15.0), _LIVER)
    # --- gall bladder in the liver fossa ---
    p.paint(ellipsoid(grid, *organ("gall", (-42.0, 48.0, 15.0), (14.0, 14.0, 27.0)), rot_z_deg=20.0), _GALL)
    # --- spleen, posterior left ---
    p.paint(ellipsoid(grid, *organ("spleen", (88.0, -38.0, 50.0), (32.0, 50.0, 55.0)), rot_z_deg=35.0), _SPLEEN)
    # --- stomach (fluid, gas anteriorly since the patient is supine) ---
    c, s = organ("stomach", (50.0, 22.0, 52.0), (40.0, 34.0, 44.0))
    st = ellipsoid(grid, c, s, rot_z_deg=-25.0)
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
        p.paint(ellipsoid(grid, c, s, rot_z_deg=rot), cortex)
        p.paint(ellipsoid(grid, c, (s[0] * 0.68, s[1] * 0.68, s[2] * 0.8), rot_z_deg=rot), medulla)
    # --- duodenum: C-loop around the pancreatic head ---
    d_pts: list[Vec3] = [(-35.0, 15.0, 2.0), (-60.0, 8.0, -18.0), (-50.0, 0.0, -45.0), (-12.0, -2.0, -52.0)]
    p.paint(tube(grid, [(q[0] + vs[0], q[1] + vs[1], q[2] + vs[2]) for q in d_pts], [10.0] * 4), _DUODENUM)
    # --- pancreas head/body/tail, partitioned along x; lesion inside ---
    pancreas_tube = tube(grid, panc_pts, panc_r)
    lesion_center: Vec3 | None = None
    lesion_label = (_L_HEAD, _L_BODY, _L_TAIL)[lesion_part]
    if pancreas_tube is not None:
        box, m = pancreas_tube
        x, y, z = grid.axes(box)
        part = np.where(
            x < np.float32(cut_head_body), _P_HEAD, np.where(x < np.float32(cut_body_tail), _P_BODY, _P_TAIL)
        )
        part = np.broadcast_to(part.astype(np.uint8), m.shape)
        sub = label[box_slices(box)]
        ok = m & (sub >= _CAVITY)
        sub[ok] = part[ok]
        p.boxes["pancreas"] = union(p.boxes.get("pancreas"), box)
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
    p.paint(cylinder_z(grid, (10.0 + vs[0], -40.0 + vs[1]), 10.0 * vessel_r, (-200.0, 200.0)), _AORTA)
    p.paint(cylinder_z(grid, (-22.0 + vs[0], -35.0 + vs[1]), 11.0 * vessel_r, (-200.0, 200.0)), _POSTCAVA)

    pbox = p.boxes.get("pancreas")
    if lesion and lesion_center is not None and pbox is not None:
        psub = label[box_slices(pbox)]
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
                p.boxes["pancreas"] = union(pbox, (idx[0], idx[0] + 1, idx[1], idx[1] + 1, idx[2], idx[2] + 1))

    # --- veins: portal vein (into the liver hilum) and splenic vein, an overlay that may touch organs ---
    v_pts: list[Vec3] = [(70.0, -36.0, 14.0), (-10.0, -12.0, -5.0), (-45.0, -5.0, 35.0), (-70.0, 0.0, 50.0)]
    veins_shape = tube(grid, [(q[0] + vs[0], q[1] + vs[1], q[2] + vs[2]) for q in v_pts], [5.5, 6.5, 7.0, 5.0])
    veins_box: Box | None = None
    veins_sub = np.zeros((0, 0, 0), dtype=bool)
    if veins_shape is not None:
        veins_box, vm = veins_shape
        vsub = label[box_slices(veins_box)]
        # Veins stay inside the cavity and off the pancreas, the lesion and the great vessels.
        veins_sub = vm & (vsub >= _CAVITY) & ((vsub < _P_HEAD) | (vsub > _POSTCAVA))
    duct_shape = None
    if duct:
        radius = vary.duct_radius_mm if vary is not None else 2.5
        duct_tube = tube(grid, panc_pts, [radius] * len(panc_pts))
        if duct_tube is not None:
            dbox, dm = duct_tube
            # The duct runs inside the pancreas parts (not through the lesion or the vessels painted over them).
            duct_shape = (dbox, dm & np.isin(label[box_slices(dbox)], (_P_HEAD, _P_BODY, _P_TAIL)))
    return label, p.boxes, veins_box, veins_sub, lesion_hu, duct_shape


def structure_of_label() -> dict[int, str]:
    """The structure name (box key) of each tissue label id that forms a structure."""
    return dict(_LABEL_TO_STRUCTURE)


def _centerline_yz(points: Sequence[Vec3], x: float) -> tuple[float, float]:
    """y and z of a polyline (monotonic in x) at a given x."""
    xs = [q[0] for q in points]
    ys = [q[1] for q in points]
    zs = [q[2] for q in points]
    return float(np.interp(x, xs, ys)), float(np.interp(x, xs, zs))
