"""Scan space <-> model space, following the MONAI conventions of the PanTS recipe.

Forward (``to_model_space``): the HU volume becomes a ``MetaTensor`` carrying the scan affine, then
``Orientation(axcodes="RAS")`` -> ``Spacing(pixdim=target_spacing, mode="bilinear")`` ->
``ScaleIntensityRange(a_min, a_max, 0, 1, clip=True)`` (computed by ``scale_intensity`` with MONAI's arithmetic in
fewer temporaries). The MetaTensor tracks the affine of every step, so the
model-space grid is fully described by its final affine and shape (kept in ``TransformInfo``).

Inverse (``to_scan_space``), the way chosen here: an *explicit* resample rather than MONAI's ``Invertd``. The
network output is a fresh tensor that does not carry the forward transforms' ``applied_operations``, and a stateless
inverse is easy to serialise and to test. The model-space channels get the model affine and are resampled with
MONAI's ``SpatialResample`` (trilinear, border padding) straight onto the scan's own grid: ``dst_affine`` = the scan
affine and ``spatial_size`` = the scan shape. That single affine resample undoes the reorientation (axis flips and
permutations) and the respacing at once, so the result has exactly the scan's shape, orientation and spacing for
any input (RAS, LPS, IPL, anisotropic, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation, Spacing, SpatialResample

__all__ = [
    "Preprocessing",
    "TransformInfo",
    "labels_to_model_space",
    "scale_intensity",
    "to_model_space",
    "to_scan_space",
]


@dataclass(frozen=True)
class Preprocessing:
    """Model-space definition: target orientation, voxel spacing (mm) and HU window scaled to [0, 1]."""

    target_spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    hu_window: tuple[float, float] = (-175.0, 250.0)
    orientation: str = "RAS"

    def __post_init__(self) -> None:
        """Validate the fields."""
        if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
            raise ValueError(f"target_spacing must be three positive numbers, got {self.target_spacing!r}")
        if len(self.hu_window) != 2 or not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {self.hu_window!r}")
        if len(self.orientation) != 3:
            raise ValueError(f"orientation must be a 3-letter axis code, got {self.orientation!r}")

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "target_spacing": [float(v) for v in self.target_spacing],
            "hu_window": [float(v) for v in self.hu_window],
            "orientation": self.orientation,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Inverse of ``to_json``; missing keys take the defaults."""
        default = cls()
        ts = tuple(float(v) for v in d.get("target_spacing", default.target_spacing))
        hw = tuple(float(v) for v in d.get("hu_window", default.hu_window))
        if len(ts) != 3 or len(hw) != 2:
            raise ValueError("target_spacing needs three entries and hu_window two")
        return cls(
            target_spacing=(ts[0], ts[1], ts[2]),
            hu_window=(hw[0], hw[1]),
            orientation=str(d.get("orientation", default.orientation)),
        )


@dataclass(frozen=True, eq=False)
class TransformInfo:
    """Both grids of one scan: its own (shape, affine) and the model space's (shape, affine)."""

    scan_shape: tuple[int, int, int]
    scan_affine: np.ndarray = field(repr=False)
    model_shape: tuple[int, int, int]
    model_affine: np.ndarray = field(repr=False)

    @property
    def same_grid(self) -> bool:
        """Whether both grids coincide (same shape, affines equal within 1e-6 mm), so resampling is the identity."""
        return self.scan_shape == self.model_shape and bool(
            np.allclose(self.scan_affine, self.model_affine, rtol=0.0, atol=1e-6)
        )


_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # world axis codes of a NIfTI/RAS+ affine


def _check_affine(affine: np.ndarray) -> np.ndarray:
    """A 4x4 float64 copy of a voxel->world affine."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {a.shape}")
    return a.copy()


def _to_model_grid(data: np.ndarray, affine: np.ndarray, prep: Preprocessing, mode: str) -> MetaTensor:
    """Reorient and respace a channel-first array; returns a MetaTensor with the model-space affine."""
    img = MetaTensor(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), affine=torch.from_numpy(affine))
    oriented = Orientation(axcodes=prep.orientation, labels=_RAS_LABELS)(img)
    spaced = Spacing(pixdim=prep.target_spacing, mode=mode, padding_mode="border", dtype=np.float32)(oriented)
    assert isinstance(spaced, MetaTensor)
    return spaced


def scale_intensity(image: torch.Tensor, hu_window: tuple[float, float]) -> torch.Tensor:
    """``ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0, b_max=1, clip=True)`` with the same float32 arithmetic
    ((x - lo) / (hi - lo), clipped to [0, 1]; the * 1 + 0 of the [0, 1] target range is exact), in one new tensor
    instead of one per step: a CT volume is hundreds of MB in float32. The input is never modified."""
    lo, hi = hu_window
    out = torch.sub(image.to(torch.float32), lo)
    return out.div_(hi - lo).clamp_(0.0, 1.0).contiguous()


def to_model_space(volume: np.ndarray, affine: np.ndarray, prep: Preprocessing) -> tuple[torch.Tensor, TransformInfo]:
    """HU volume (X, Y, Z) -> float32 tensor (1, X', Y', Z') in [0, 1] on the model grid, plus the grid info."""
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D, got shape {volume.shape}")
    aff = _check_affine(affine)
    img = _to_model_grid(np.asarray(volume)[None], aff, prep, "bilinear")
    model_affine = img.affine.detach().cpu().numpy().astype(np.float64)
    tensor = scale_intensity(img.as_tensor(), prep.hu_window)
    shape = tuple(int(s) for s in tensor.shape[1:])
    info = TransformInfo(
        scan_shape=(int(volume.shape[0]), int(volume.shape[1]), int(volume.shape[2])),
        scan_affine=aff,
        model_shape=(shape[0], shape[1], shape[2]),
        model_affine=model_affine,
    )
    return tensor, info


def labels_to_model_space(masks: np.ndarray, affine: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """Boolean masks (C, X, Y, Z) -> float32 {0, 1} tensor (C, X', Y', Z') on the model grid (nearest neighbour)."""
    if masks.ndim != 4:
        raise ValueError(f"masks must be (C, X, Y, Z), got shape {masks.shape}")
    img = _to_model_grid(np.asarray(masks, dtype=np.float32), _check_affine(affine), prep, "nearest")
    return (img.as_tensor() > 0.5).to(torch.float32).contiguous()


def to_scan_space(channels: torch.Tensor | np.ndarray, info: TransformInfo) -> np.ndarray:
    """Model-space channels (C, X', Y', Z') -> float32 (C, X, Y, Z) on the scan's own grid (trilinear resample).

    Channels on a GPU are resampled there (a 512×512×300 scan's eight channels take ~12 s on two CPU cores) and
    only the result is copied back.
    """
    t = torch.as_tensor(channels).detach().to(dtype=torch.float32)
    if t.ndim != 4 or tuple(t.shape[1:]) != info.model_shape:
        raise ValueError(f"channels must be (C, *{info.model_shape}), got {tuple(t.shape)}")
    src = MetaTensor(t, affine=torch.from_numpy(info.model_affine))
    out = SpatialResample(mode="bilinear", padding_mode="border", dtype=np.float32)(
        src, dst_affine=torch.from_numpy(info.scan_affine), spatial_size=info.scan_shape
    )
    arr = np.asarray(out.detach().cpu().numpy(), dtype=np.float32)
    if arr.shape[1:] != info.scan_shape:  # pragma: no cover - guarded by the tests
        raise RuntimeError(f"inverse resample produced {arr.shape[1:]}, expected {info.scan_shape}")
    return arr
