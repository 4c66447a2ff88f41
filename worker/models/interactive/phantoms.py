"""Phantom cases for the interactive model: training cases on the model grid and held-out scans for evaluation.

Training and held-out phantoms come from disjoint seed ranges and are drawn with shape variation
(``generate_phantom(variation=...)``), so the held-out anatomy is never seen in training. The generator lives in
``backend.imaging.phantom`` (pure numpy/scipy/nibabel) and is imported lazily, only here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.models.interactive.geometry import orientation_of, spacing_of, to_canonical
from worker.models.interactive.guidance import resample, window

__all__ = [
    "EVAL_STRUCTURES",
    "GOAL_STRUCTURES",
    "HELDOUT_SEED",
    "TRAIN_SEED",
    "TRAIN_STRUCTURES",
    "ModelSpaceCase",
    "heldout_phantom",
    "model_space_case",
    "training_phantom",
]

TRAIN_SEED = 10_000
HELDOUT_SEED = 900_000
# The goal organs (kidneys count as two structures), then the lesion and the duct (reported, no goal).
GOAL_STRUCTURES = ("liver", "spleen", "kidney_left", "kidney_right", "pancreas", "aorta", "stomach")
EVAL_STRUCTURES = (*GOAL_STRUCTURES, "pancreatic_lesion", "pancreatic_duct")
# What the model learns (and so "knows"): every phantom structure that is an object of its own. The pancreas
# parts are cut by planes no image shows, so clicks cannot teach them; they stay unknown.
TRAIN_STRUCTURES = (
    *EVAL_STRUCTURES,
    "duodenum",
    "gall_bladder",
    "lung_left",
    "lung_right",
    "postcava",
    "veins",
)


@dataclass
class ModelSpaceCase:
    """A phantom on the model grid (RAS order): windowed image (float16 in [0, 1]) and boxed masks."""

    image: np.ndarray
    boxes: dict[str, tuple[tuple[int, int, int], np.ndarray]]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The model-grid shape."""
        s = self.image.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    def mask(self, name: str) -> np.ndarray:
        """The full model-grid mask of a structure."""
        out = np.zeros(self.shape, dtype=bool)
        (i, j, k), sub = self.boxes[name]
        out[i : i + sub.shape[0], j : j + sub.shape[1], k : k + sub.shape[2]] = sub
        return out


def _boxed(mask: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray] | None:
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return None
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    return (int(lo[0]), int(lo[1]), int(lo[2])), mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].copy()


def model_space_case(
    volume: np.ndarray,
    affine: np.ndarray,
    masks: dict[str, np.ndarray],
    spacing_mm: float,
    hu_window: tuple[float, float],
) -> ModelSpaceCase:
    """A scan and its masks moved to the model grid with the same reorder/resample steps ``refine`` uses."""
    ornt = orientation_of(affine)
    spacing = spacing_of(affine)
    canon = to_canonical(np.asarray(volume, dtype=np.float32), ornt)
    cshape = [0, 0, 0]
    for axis, (target, _flip) in enumerate(ornt):
        cshape[int(target)] = max(1, round(volume.shape[axis] * spacing[axis] / spacing_mm))
    image = window(resample(canon, cshape), hu_window).numpy().astype(np.float16)
    boxes = {}
    for name, m in masks.items():
        boxed = _boxed((resample(to_canonical(m.astype(np.float32), ornt), cshape) > 0.5).numpy())
        if boxed is not None:
            boxes[name] = boxed
    return ModelSpaceCase(image=image, boxes=boxes)


def save_case(case: ModelSpaceCase, path: Path) -> None:
    """Write a model-grid case (``.npz``), so repeated training runs skip drawing the phantoms."""
    arrays: dict[str, np.ndarray] = {"image": case.image}
    for name, (origin, sub) in case.boxes.items():
        arrays[f"origin:{name}"] = np.asarray(origin, dtype=np.int64)
        arrays[f"mask:{name}"] = sub
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)  # type: ignore[arg-type]


def load_case(path: Path) -> ModelSpaceCase:
    """Read a case written by ``save_case``."""
    with np.load(path) as data:
        boxes = {}
        for key in data.files:
            if key.startswith("mask:"):
                name = key[5:]
                o = data[f"origin:{name}"]
                boxes[name] = ((int(o[0]), int(o[1]), int(o[2])), data[key])
        return ModelSpaceCase(image=data["image"], boxes=boxes)


def training_phantom(
    index: int, spacing_mm: float, hu_window: tuple[float, float], cache: Path | None = None
) -> ModelSpaceCase:
    """Training case ``index``: a varied phantom at a random field of view and voxel size, on the model grid
    (read from / written to ``cache`` when given)."""
    cached = None if cache is None else cache / f"case-{TRAIN_SEED + index}-{spacing_mm:g}mm.npz"
    if cached is not None and cached.exists():
        return load_case(cached)
    from backend.imaging.phantom import generate_phantom  # lazy: only the trainer and the benchmark need it

    seed = TRAIN_SEED + index
    rng = np.random.default_rng(seed)
    fov = (rng.uniform(330, 400), rng.uniform(330, 400), rng.uniform(230, 300))
    inplane = rng.uniform(1.6, 2.8)
    spacing = (inplane, inplane, rng.uniform(2.0, 4.0))
    shape = tuple(max(16, round(f / s)) for f, s in zip(fov, spacing, strict=True))
    ph = generate_phantom(
        shape,
        spacing,
        seed=seed,
        lesion=bool(rng.random() < 0.75),
        variation=float(rng.uniform(0.6, 1.4)),
        duct=True,
        noise_hu=float(rng.uniform(6.0, 14.0)),
    )
    masks = {name: ph.masks[name] for name in TRAIN_STRUCTURES if name in ph.masks}
    case = model_space_case(ph.volume, ph.affine, masks, spacing_mm, hu_window)
    if cached is not None:
        save_case(case, cached)
    return case


def heldout_phantom(
    index: int,
    shape: Sequence[int] = (192, 192, 104),
    spacing: Sequence[float] = (1.875, 1.875, 2.5),
    orientation: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Held-out scan ``index`` (volume, affine, masks): unseen seeds, variation 1, every other one stored LPS."""
    from backend.imaging.phantom import generate_phantom

    code = orientation or ("RAS" if index % 2 == 0 else "LPS")
    ph = generate_phantom(
        tuple(int(s) for s in shape),
        tuple(float(s) for s in spacing),
        seed=HELDOUT_SEED + index,
        lesion=True,
        variation=1.0,
        duct=True,
        orientation=code,
    )
    return ph.volume, ph.affine, ph.masks
