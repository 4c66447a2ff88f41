"""Weightless classical pre-annotator: HU bands, connected components and position priors in RAS world space.

Everything is computed on the volume reoriented to RAS array order (nibabel-style axis flips/permutations taken
from the affine); the position priors use x growing towards the patient's left (RAS+ world x negated),
y posterior->anterior and z inferior->superior;
the scores are put back into the scan's own axis order at the end. Distances use the voxel spacing of the affine;
positions are world coordinates relative to the body's bounding box (centre and half-extent per axis).

Two smoothed copies of the HU volume are used: ``smooth`` (Gaussian, sigma 3.5 mm) suppresses the CT noise enough
to tell 60 HU liver from 50 HU spleen/muscle and picks each organ's *core*; ``light`` (sigma ~1.5 mm) keeps the
edges sharp. Per structure:

- ``lung_left`` / ``lung_right``: band (-910, -550) HU (lightly smoothed) inside the body, large components,
  assigned by the sign of world x relative to the body centre (+x is patient left).
- ``liver``: band (55, 100) HU inside the abdominal cavity, the largest component whose centroid lies on the
  patient right; closed and hole-filled (vessels inside the liver).
- ``spleen``: band (44, 56) HU inside the cavity, the largest component on the patient left and posterior.
- ``aorta`` / ``postcava``: contrast blobs (100..300 HU) traced slice by slice near their expected positions in
  front of the spine (aorta just left of the midline, postcava to its right).
- ``kidney_left`` / ``kidney_right``: contrast-enhanced cortex in lateral posterior components (after removing the
  great vessels and an opening that cuts thin veins), hole-filled to include the medulla.
- ``stomach``: fluid band (8, 32) HU on the patient left and anterior, plus the non-lung air (< -500 HU inside
  the body) within reach of it.

The cores shrink at edges (smoothing, strict bands), so every region is then grown back for a few voxels at
``light`` resolution inside a permissive band (soft tissue, air, or above the contrast/fat half-maximum), in
competition (a contested voxel goes to the structure whose typical HU is nearest).

Anatomical sizes (wall thickness, vessel radii, minimum volumes) are for a body 320 mm wide and scale with the
measured body width, so small or synthetic fields of view still work. Phantom-tuned by design: the thresholds
assume contrast-enhanced venous-phase CT like the project's phantoms and are no substitute for a trained model.

Soft scores: ``score > 0.5`` exactly on the region. Inside, ``0.5 + 0.5 * depth * c`` with ``depth`` the distance
to the region border (saturating at 3 voxels) and ``c`` in [0.2, 1] a logistic ramp of the HU against the
structure's band; outside, ``0.5 - 0.5 * depth``. Region borders and HU-ambiguous voxels thus score near 0.5 and
carry a meaningful entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform
from scipy import ndimage

__all__ = ["CLASSICAL_STRUCTURES", "classical_probabilities"]

CLASSICAL_STRUCTURES: tuple[str, ...] = (
    "aorta",
    "kidney_left",
    "kidney_right",
    "liver",
    "lung_left",
    "lung_right",
    "postcava",
    "spleen",
    "stomach",
)

_SMOOTH_MM = 3.5
_LIGHT_MM = 1.5
_RAMP_HU = 8.0
_SOFT_DEPTH_VOX = 3.0
_BODY_HALF_WIDTH_MM = 160.0
_CROSS = ndimage.generate_binary_structure(3, 1)
_AXIAL_CROSS = np.zeros((3, 3, 3), dtype=bool)  # 4-connected within an axial slice, no link across slices
_AXIAL_CROSS[:, :, 1] = ndimage.generate_binary_structure(2, 1)

# HU band of each structure, for the confidence ramp of the soft score.
_BANDS: dict[str, tuple[float, float]] = {
    "aorta": (100.0, 300.0),
    "kidney_left": (15.0, 300.0),
    "kidney_right": (15.0, 300.0),
    "liver": (15.0, 110.0),
    "lung_left": (-1100.0, -500.0),
    "lung_right": (-1100.0, -500.0),
    "postcava": (100.0, 300.0),
    "spleen": (15.0, 110.0),
    "stomach": (-1100.0, 110.0),
}
# Typical HU of the structures that are grown back competitively.
_MEANS: dict[str, float] = {
    "aorta": 150.0,
    "kidney_left": 100.0,
    "kidney_right": 100.0,
    "liver": 60.0,
    "lung_left": -800.0,
    "lung_right": -800.0,
    "postcava": 150.0,
    "spleen": 50.0,
    "stomach": 20.0,
}


@dataclass
class _Scene:
    """The RAS-ordered volume, its smoothed copies, spacing, world axes and body/cavity masks."""

    smooth: np.ndarray
    light: np.ndarray
    spacing: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    body: np.ndarray
    cavity: np.ndarray
    centre: np.ndarray
    half: np.ndarray
    scale: float

    def voxels(self, ml: float) -> int:
        """Number of voxels in ``ml`` millilitres of a standard-size body (scaled by ``scale``**3, at least 1)."""
        return max(1, int(ml * self.scale**3 * 1000.0 / float(np.prod(self.spacing))))

    def centroid(self, mask: np.ndarray) -> np.ndarray:
        """World centroid of a mask relative to the body centre, in units of the body half-extent."""
        idx = np.nonzero(mask)
        pos = np.array([self.x[idx[0]].mean(), self.y[idx[1]].mean(), self.z[idx[2]].mean()])
        return np.asarray((pos - self.centre) / self.half)


def _fill_holes(mask: np.ndarray, axial: bool = False) -> np.ndarray:
    """Fill holes (background not 6-connected to the array border) in 3-D, or per axial (x, y) slice.

    Same result as ``ndimage.binary_fill_holes`` (per slice when ``axial``), but by one labelling pass of the
    background instead of an iterated dilation, which is much faster on large volumes.
    """
    lab, n = ndimage.label(~mask, structure=_AXIAL_CROSS if axial else _CROSS)
    if n == 0:
        return mask.copy()
    border = np.zeros(n + 1, dtype=bool)
    faces = [lab[0], lab[-1], lab[:, 0], lab[:, -1]]
    if not axial:
        faces += [lab[:, :, 0], lab[:, :, -1]]
    for face in faces:
        border[np.unique(face)] = True
    border[0] = False  # label 0: the mask itself
    return np.asarray(~border[lab])


def _fill_holes_axial(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice in the axial (x, y) planes."""
    return _fill_holes(mask, axial=True)


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """Bounding box of a non-empty mask grown by ``margin`` voxels (clipped to the array)."""
    idx = np.nonzero(mask)
    b = [
        slice(max(0, int(i.min()) - margin), min(n, int(i.max()) + margin + 1))
        for i, n in zip(idx, mask.shape, strict=True)
    ]
    return (b[0], b[1], b[2])


def _components(mask: np.ndarray, min_voxels: int) -> list[np.ndarray]:
    """Connected components (6-connected) with at least ``min_voxels`` voxels, largest first."""
    lab, n = ndimage.label(mask, structure=_CROSS)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())
    order = [int(i) for i in np.argsort(sizes[1:])[::-1] + 1 if sizes[i] >= min_voxels]
    return [lab == i for i in order]


def _scene(volume: np.ndarray, spacing: np.ndarray, affine: np.ndarray) -> _Scene:
    """Smooth the RAS volume and find the body, the abdominal cavity and the world axes."""
    raw = volume.astype(np.float32)
    smooth = ndimage.gaussian_filter(raw, sigma=[max(0.6, _SMOOTH_MM / float(s)) for s in spacing], mode="nearest")
    light = ndimage.gaussian_filter(raw, sigma=[max(0.5, _LIGHT_MM / float(s)) for s in spacing], mode="nearest")
    # The priors below reason with x growing towards the patient's LEFT: RAS+ world x (patient right) negated.
    x = -(affine[0, 0] * np.arange(raw.shape[0]) + affine[0, 3])
    y = affine[1, 1] * np.arange(raw.shape[1]) + affine[1, 3]
    z = affine[2, 2] * np.arange(raw.shape[2]) + affine[2, 3]
    comps = _components(smooth > -500.0, 1)
    body = _fill_holes_axial(comps[0]) if comps else np.zeros(raw.shape, dtype=bool)
    if body.any():
        idx = np.nonzero(body)
        lo = np.array([x[idx[0].min()], y[idx[1].min()], z[idx[2].min()]])
        hi = np.array([x[idx[0].max()], y[idx[1].max()], z[idx[2].max()]])
        centre = (lo + hi) / 2.0
        half = np.maximum(np.abs(hi - lo) / 2.0, 1.0)
    else:
        centre, half = np.zeros(3), np.ones(3)
    # Anatomical sizes below are for a body of _BODY_HALF_WIDTH_MM half-width (left-right); scale them.
    scale = float(np.clip(half[0] / _BODY_HALF_WIDTH_MM, 0.3, 2.0))
    # Abdominal cavity: inside the soft-tissue wall, i.e. farther than ~12 mm (in-plane) from the outer surface
    # of the hole-filled soft-tissue region (the muscle layer under the subcutaneous fat).
    soft = _fill_holes_axial(body & (smooth > -30.0))
    cavity = np.zeros_like(body)
    for k in range(raw.shape[2]):
        if soft[:, :, k].any():
            cavity[:, :, k] = ndimage.distance_transform_edt(soft[:, :, k], sampling=spacing[:2]) > 12.0 * scale
    return _Scene(smooth, light, spacing, x, y, z, body, cavity, centre, half, scale)


def _close_fill(mask: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Binary closing (padded, so borders do not erode) then 3-D hole filling."""
    if not mask.any():
        return mask
    pad = iterations + 1
    closed = ndimage.binary_closing(np.pad(mask, pad), structure=_CROSS, iterations=iterations)
    closed = closed[pad:-pad, pad:-pad, pad:-pad]
    return _fill_holes(closed | mask)


def _pick(
    scene: _Scene,
    band: np.ndarray,
    side: float,
    min_ml: float,
    x_min: float = 0.0,
    y_range: tuple[float, float] = (-2.0, 2.0),
) -> np.ndarray:
    """Largest component of ``band`` whose centroid lies on the given side (sign of x) at least ``x_min`` off the
    midline, with its y within ``y_range`` (body half-extents)."""
    for comp in _components(band, scene.voxels(min_ml)):
        c = scene.centroid(comp)
        if c[0] * side > x_min and y_range[0] < c[1] < y_range[1]:
            return comp
    return np.zeros_like(band)


def _lungs(scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """Right and left lung regions (lung vs gas vs soft tissue needs no heavy smoothing: ``light`` is used)."""
    band = scene.body & (scene.light > -910.0) & (scene.light < -550.0)
    band = ndimage.binary_opening(band, structure=_CROSS)
    right = np.zeros_like(band)
    left = np.zeros_like(band)
    xs = scene.x[:, None, None]
    for comp in _components(band, scene.voxels(20.0))[:4]:
        c = scene.centroid(comp)
        if abs(c[0]) < 0.1:  # both lungs in one component: split at the body centre
            right |= comp & (xs < scene.centre[0])
            left |= comp & (xs >= scene.centre[0])
        elif c[0] < 0:
            right |= comp
        else:
            left |= comp
    return _fill_holes_axial(right), _fill_holes_axial(left)


def _liver(scene: _Scene) -> np.ndarray:
    """Liver core: largest cavity component of the (55, 100) HU band on the patient right."""
    band = scene.cavity & (scene.smooth > 55.0) & (scene.smooth < 100.0)
    band = ndimage.binary_opening(band, structure=_CROSS)
    return _close_fill(_pick(scene, band, side=-1.0, min_ml=50.0))


def _spleen(scene: _Scene, exclude: np.ndarray) -> np.ndarray:
    """Spleen core: largest cavity component of the (44, 56) HU band on the patient left, posterior half."""
    band = scene.cavity & (scene.smooth > 44.0) & (scene.smooth < 56.0) & ~exclude
    band = ndimage.binary_opening(band, structure=_CROSS)
    return _close_fill(_pick(scene, band, side=1.0, min_ml=20.0, x_min=0.3, y_range=(-0.65, 0.3))) & ~exclude


def _stomach(scene: _Scene, exclude: np.ndarray) -> np.ndarray:
    """Stomach: fluid-band component on the patient left and anterior, plus the gas touching it."""
    fluid = scene.cavity & (scene.smooth > 8.0) & (scene.smooth < 32.0) & ~exclude
    fluid = ndimage.binary_opening(fluid, structure=_CROSS)
    comp = np.zeros_like(fluid)
    for cand in _components(fluid, scene.voxels(20.0)):
        c = scene.centroid(cand)
        if c[0] > 0.05 and c[1] > -0.2:
            comp = cand
            break
    if not comp.any():
        return comp
    gas = scene.body & (scene.light < -500.0) & ~exclude
    reach = max(2, round(4.0 * _SMOOTH_MM / float(np.mean(scene.spacing))))  # the smoothed band shrinks at gas
    near = ndimage.binary_dilation(comp, structure=_CROSS, iterations=reach)
    lab, _ = ndimage.label(gas, structure=_CROSS)
    touching = np.unique(lab[near & gas])
    comp |= np.isin(lab, touching[touching > 0])
    return _close_fill(comp, 1) & ~exclude


def _contrast(scene: _Scene) -> np.ndarray:
    """Contrast-enhanced voxels (vessels, kidney cortex), bone excluded."""
    return scene.body & (scene.light > 100.0) & (scene.light < 300.0)


def _vessel(scene: _Scene, contrast: np.ndarray, prior_xy: tuple[float, float], radius_mm: float) -> np.ndarray:
    """Trace a z-running vessel slice by slice: the contrast blob nearest the prior position, within reach."""
    out = np.zeros_like(contrast)
    px = scene.centre[0] + prior_xy[0] * scene.half[0]
    py = scene.centre[1] + prior_xy[1] * scene.half[1]
    d2 = (scene.x[:, None] - px) ** 2 + (scene.y[None, :] - py) ** 2
    near = d2 <= (2.5 * radius_mm) ** 2
    disc = d2 <= (1.6 * radius_mm) ** 2
    cross2 = ndimage.generate_binary_structure(2, 1)
    pixel_mm2 = float(scene.spacing[0] * scene.spacing[1])
    for k in range(contrast.shape[2]):
        sl = contrast[:, :, k] & near
        if not sl.any():
            continue
        lab, n = ndimage.label(sl, structure=cross2)
        best, best_d = 0, np.inf
        for i in range(1, n + 1):
            ii, jj = np.nonzero(lab == i)
            if len(ii) * pixel_mm2 < 0.1 * np.pi * radius_mm**2:
                continue
            d = (scene.x[ii].mean() - px) ** 2 + (scene.y[jj].mean() - py) ** 2
            if d < best_d:
                best, best_d = i, d
        if best:
            blob = lab == best
            if blob.sum() * pixel_mm2 > 2.0 * np.pi * radius_mm**2:  # merged with a neighbour: keep the near part
                blob &= disc
            out[:, :, k] = ndimage.binary_fill_holes(blob)
    return out


def _kidneys(scene: _Scene, contrast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right and left kidneys: lateral posterior contrast components, hole-filled (the medulla)."""
    solid = _fill_holes_axial(contrast & scene.cavity)
    radius = max(1, round(6.0 * scene.scale / float(np.mean(scene.spacing[:2]))))
    opened = ndimage.binary_opening(solid, structure=_CROSS, iterations=radius)
    right = np.zeros_like(solid)
    left = np.zeros_like(solid)
    for comp in _components(opened, scene.voxels(10.0))[:8]:
        c = scene.centroid(comp)
        if abs(c[0]) > 0.2 and c[1] < -0.1:
            if c[0] < 0 and not right.any():
                right = comp
            elif c[0] > 0 and not left.any():
                left = comp
    out = []
    for core in (right, left):
        if core.any():  # undo the opening inside the solid mask (within the core's box), then close the poles
            box = _bbox(core, radius + 2)
            grown = core[box]
            for _ in range(radius + 1):
                grown = ndimage.binary_dilation(grown, structure=_CROSS) & solid[box]
            core = np.zeros_like(solid)
            core[box] = grown
            core = _close_fill(core, 2)
        out.append(core)
    return out[0], out[1]


def _grow(regions: dict[str, np.ndarray], allowed: dict[str, np.ndarray], light: np.ndarray, steps: int) -> None:
    """Competitive geodesic growth (in place): each round every region claims its free 6-neighbours in ``allowed``;
    a voxel claimed by several regions goes to the one whose typical HU is nearest the lightly smoothed value."""
    names = [n for n in regions if regions[n].any()]
    if not names:
        return
    taken = np.zeros_like(regions[names[0]])
    for n in names:
        taken |= regions[n]
    # Each region only ever changes within its bounding box grown by ``steps`` voxels: work there.
    boxes = {n: _bbox(regions[n], steps + 1) for n in names}
    best = np.full(light.shape, np.inf, dtype=np.float32)
    owner = np.full(light.shape, -1, dtype=np.int8)
    for _ in range(steps):
        for i, n in enumerate(names):
            b = boxes[n]
            claim = ndimage.binary_dilation(regions[n][b], structure=_CROSS) & allowed[n][b] & ~taken[b]
            cost = np.where(claim, np.abs(light[b] - np.float32(_MEANS[n])), np.float32(np.inf))
            better = cost < best[b]
            owner[b][better] = i
            best[b][better] = cost[better]
        if not (owner >= 0).any():
            break
        for i, n in enumerate(names):
            b = boxes[n]
            new = owner[b] == i
            regions[n][b] |= new
            taken[b] |= new
        for n in names:  # reset only where it was written
            best[boxes[n]] = np.inf
            owner[boxes[n]] = -1


def _segment(scene: _Scene, wanted: set[str]) -> dict[str, np.ndarray]:
    """Boolean RAS regions of the wanted structures (and of those they are separated from)."""
    regions: dict[str, np.ndarray] = {}
    if wanted & {"lung_left", "lung_right", "liver", "spleen", "stomach"}:
        regions["lung_right"], regions["lung_left"] = _lungs(scene)
    if wanted & {"aorta", "postcava", "kidney_left", "kidney_right", "liver", "spleen", "stomach"}:
        contrast = _contrast(scene)
        regions["aorta"] = _vessel(scene, contrast, (0.06, -0.29), 10.0 * scene.scale)
        regions["postcava"] = _vessel(scene, contrast, (-0.13, -0.25), 11.0 * scene.scale)
        vessels = ndimage.binary_dilation(regions["aorta"] | regions["postcava"], structure=_CROSS)
        regions["kidney_right"], regions["kidney_left"] = _kidneys(scene, contrast & ~vessels)
    if wanted & {"liver", "spleen", "stomach"}:
        regions["liver"] = _liver(scene)
        taken = regions["liver"] | regions["kidney_left"] | regions["kidney_right"]
        regions["spleen"] = _spleen(scene, taken | regions["aorta"] | regions["postcava"])
        lungs = ndimage.binary_dilation(regions["lung_left"] | regions["lung_right"], structure=_CROSS)
        regions["stomach"] = _stomach(scene, taken | regions["spleen"] | lungs)
    # The smoothed-band cores shrink at edges: grow the soft-tissue organs and the lungs back at the lightly
    # smoothed resolution, in competition with each other and never into the other structures.
    tissue = scene.cavity & (scene.light > 15.0) & (scene.light < 110.0)
    air = scene.body & (scene.light < -500.0)
    enhanced = scene.cavity & (scene.light > 25.0) & (scene.light < 300.0)  # above the contrast/fat half-maximum
    allowed = {
        "aorta": enhanced,
        "kidney_left": enhanced | tissue,
        "kidney_right": enhanced | tissue,
        "liver": tissue,
        "lung_left": air,
        "lung_right": air,
        "postcava": enhanced,
        "spleen": tissue,
        "stomach": tissue | air,
    }
    grow = {n: regions[n] for n in _MEANS if n in regions}
    steps = max(1, round(2.0 * _SMOOTH_MM / float(np.mean(scene.spacing))))
    _grow(grow, allowed, scene.light, steps)
    regions.update(grow)
    return regions


def _soft(scene: _Scene, region: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """Soft score of a region (> 0.5 exactly on it); see the module docstring."""
    out = np.zeros(region.shape, dtype=np.float32)
    if not region.any():
        return out
    m = int(np.ceil(_SOFT_DEPTH_VOX)) + 1
    idx = np.nonzero(region)
    box = tuple(
        slice(max(0, int(i.min()) - m), min(n, int(i.max()) + m + 1)) for i, n in zip(idx, region.shape, strict=True)
    )
    sub = region[box]
    inside = ndimage.distance_transform_edt(np.pad(sub, 1))[1:-1, 1:-1, 1:-1]
    outside = ndimage.distance_transform_edt(~sub)
    d_in = np.minimum(inside / _SOFT_DEPTH_VOX, 1.0)
    d_out = np.minimum(outside / _SOFT_DEPTH_VOX, 1.0)
    v = scene.light[box]
    lo, hi = band
    a = np.clip((v - np.float32(lo)) / np.float32(_RAMP_HU), -30.0, 30.0)
    b = np.clip((np.float32(hi) - v) / np.float32(_RAMP_HU), -30.0, 30.0)
    conf = 0.2 + 0.8 / ((1.0 + np.exp(-a)) * (1.0 + np.exp(-b)))
    score = np.where(sub, 0.5 + 0.5 * d_in * conf, 0.5 - 0.5 * d_out)
    out[box] = np.clip(score, 0.0, 1.0)
    # Voxels farther than the box margin from the region are 0 already.
    return out


def classical_probabilities(volume: np.ndarray, affine: np.ndarray, structures: Sequence[str]) -> np.ndarray:
    """Soft scores in [0, 1], float32 (C, X, Y, Z) in the scan's own axis order, one channel per structure."""
    unknown = [s for s in structures if s not in CLASSICAL_STRUCTURES]
    if unknown:
        raise ValueError(f"classical pre-annotator cannot segment {unknown}; supported: {CLASSICAL_STRUCTURES}")
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D, got shape {volume.shape}")
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {aff.shape}")
    ornt = io_orientation(aff)
    ras = apply_orientation(np.asarray(volume), ornt)
    ras_affine = aff @ inv_ornt_aff(ornt, volume.shape)
    spacing = np.sqrt((ras_affine[:3, :3] ** 2).sum(axis=0))
    scene = _scene(ras, spacing, ras_affine)
    regions = _segment(scene, set(structures))
    back = ornt_transform(np.array([[0, 1], [1, 1], [2, 1]], dtype=float), ornt)
    out = np.zeros((len(structures), *volume.shape), dtype=np.float32)
    for c, name in enumerate(structures):
        out[c] = apply_orientation(_soft(scene, regions[name], _BANDS[name]), back)
    return out
