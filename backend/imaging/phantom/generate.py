"""Drawing one phantom: the anatomy rasterised in RAS order, HU and noise, then stored in the asked orientation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from backend.imaging.phantom.anatomy import (
    PHANTOM_STRUCTURES,
    STRUCTURE_LABELS,
    VEIN_HU,
    draw_anatomy,
    hu_table,
    structure_of_label,
)
from backend.imaging.phantom.geometry import Box, Grid, box_slices
from backend.imaging.phantom.variation import DUCT_HU, draw_variation, label_boxes, mask_box, warp

# Only drawn when asked for (``duct=True``), so the default phantom's structures stay those of PHANTOM_STRUCTURES.
DUCT = "pancreatic_duct"


@dataclass(frozen=True)
class Phantom:
    """A synthetic CT volume (int16 HU), its voxel->world affine and one boolean mask per structure."""

    volume: np.ndarray
    affine: np.ndarray
    masks: dict[str, np.ndarray]
    has_lesion: bool


def parse_orientation(orientation: str) -> tuple[str, str, str]:
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
    variation: float = 0.0,
    duct: bool = False,
) -> Phantom:
    """Draw a deterministic abdominal CT phantom; shape and spacing are in the output axis order.

    ``variation`` > 0 (opt-in, up to 2) adds seeded shape variation: organ sizes and positions, lesion size and
    position, a smooth random deformation (``backend.imaging.phantom.variation``); 0 draws the default anatomy.
    ``duct`` adds a ``pancreatic_duct`` mask (a thin fluid-filled tube inside the pancreas).
    """
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError("shape and spacing must have three entries")
    if min(shape) < 1 or min(spacing) <= 0:
        raise ValueError("shape entries must be >= 1 and spacing entries > 0")
    if noise_hu < 0:
        raise ValueError("noise_hu must be >= 0")
    vary = draw_variation(seed, variation) if variation else None
    codes = parse_orientation(orientation)
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
    grid = Grid(rshape)
    label, boxes, veins_box, veins_sub, lesion_hu, duct_shape = draw_anatomy(grid, rng, lesion, vary, duct)
    if vary is not None:
        label, boxes, veins_box, veins_sub, duct_shape = _deform(
            grid, vary.control, label, veins_box, veins_sub, duct_shape
        )

    volume = hu_table(lesion_hu)[label]
    if veins_box is not None:
        volume[box_slices(veins_box)][veins_sub] = VEIN_HU
    if duct_shape is not None:
        volume[box_slices(duct_shape[0])][duct_shape[1]] = DUCT_HU
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
        ids = STRUCTURE_LABELS[name]
        sub = label[box_slices(box)]
        parts[name] = (box, sub == ids[0] if len(ids) == 1 else np.isin(sub, ids))
    del label
    if duct_shape is not None:
        parts[DUCT] = duct_shape

    masks: dict[str, np.ndarray] = {}
    for name in (*PHANTOM_STRUCTURES, DUCT) if duct else PHANTOM_STRUCTURES:
        m = np.zeros(volume.shape, dtype=bool)
        if name in parts:
            box, sub = parts.pop(name)
            if transform is None:
                m[box_slices(box)] = sub
            else:
                m[box_slices(_reorient_box(box, rshape, transform))] = apply_orientation(sub, transform)
        masks[name] = m
    return Phantom(volume=volume, affine=affine, masks=masks, has_lesion=bool(lesion))


def _deform(
    grid: Grid,
    control: np.ndarray,
    label: np.ndarray,
    veins_box: Box | None,
    veins_sub: np.ndarray,
    duct_shape: tuple[Box, np.ndarray] | None,
) -> tuple[np.ndarray, dict[str, Box | None], Box | None, np.ndarray, tuple[Box, np.ndarray] | None]:
    """Warp the label map and the overlays by one smooth field; recompute every structure's box."""
    overlays = []
    for box, sub in ((veins_box, veins_sub), duct_shape or (None, None)):
        full = np.zeros(label.shape, dtype=bool)
        if box is not None and sub is not None:
            full[box_slices(box)] = sub
        overlays.append(full)
    label, veins, duct = warp(grid, control, [label, *overlays])
    boxes = label_boxes(label, structure_of_label())
    veins_part = mask_box(veins)
    new_veins_box, new_veins_sub = veins_part if veins_part is not None else (None, np.zeros((0, 0, 0), dtype=bool))
    new_duct = mask_box(duct) if duct_shape is not None else None
    return label, boxes, new_veins_box, new_veins_sub, new_duct


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
