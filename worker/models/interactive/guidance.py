"""Guidance channels (DeepGrow/DeepEdit scheme) and the model-grid resampling that training and inference share.

Clicks become the Gaussian maps of MONAI DeepGrow's ``AddGuidanceSignald`` (a unit impulse per click, MONAI's
``GaussianFilter`` of ``sigma`` voxels, min-max scaled to [0, 1]; one channel for the positive clicks, one for the
negative), stacked after the HU-windowed image and before the previous mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers.convutils import gaussian_1d

from worker.models.interactive.geodesic import geodesic_maps
from worker.models.preprocessing import scale_intensity

if TYPE_CHECKING:
    from worker.models.interactive.model import InteractiveConfig

__all__ = ["build_input", "click_signal", "pad_to", "resample", "window"]

Index = tuple[int, int, int]


def _kernel(sigma: float) -> np.ndarray:
    """The 1-D Gaussian ``GaussianFilter`` uses (``gaussian_1d``, erf approximation, truncated at 4 sigma)."""
    return gaussian_1d(torch.tensor(float(sigma)), truncated=4.0, approx="erf").numpy().astype(np.float32)


def click_signal(
    shape: Sequence[int], positive: Sequence[Index], negative: Sequence[Index], sigma: float
) -> np.ndarray:
    """(2, *shape) float32: Gaussian maps of the positive and the negative clicks (points outside are dropped).

    The values of DeepGrow's ``AddGuidanceSignald`` (impulse per click, MONAI ``GaussianFilter`` with zero padding,
    min-max scaled), computed as a sum of separable kernels in each click's window instead of a full-volume
    convolution: ~1 ms instead of ~0.1 s per channel at 64³ (a unit test keeps the two equal).
    """
    dims = [int(v) for v in shape]
    kernel = _kernel(sigma)
    half = (len(kernel) - 1) // 2
    out = np.zeros((2, *dims), dtype=np.float32)
    for channel, points in enumerate((positive, negative)):
        unique = {tuple(int(v) for v in p) for p in points}
        for p in unique:
            if not all(0 <= v < n for v, n in zip(p, dims, strict=True)):
                continue
            lo = [max(0, v - half) for v in p]
            hi = [min(n, v + half + 1) for v, n in zip(p, dims, strict=True)]
            k = [kernel[a - v + half : b - v + half] for a, b, v in zip(lo, hi, p, strict=True)]
            out[channel, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += (
                k[0][:, None, None] * k[1][None, :, None] * k[2][None, None, :]
            )
        top, bottom = float(out[channel].max()), float(out[channel].min())
        if top > 0:
            out[channel] = (out[channel] - bottom) / (top - bottom)
    return out


def resample(array: np.ndarray | torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A 3-D array resized to ``size`` (trilinear, ``align_corners=False``) as a float32 (X, Y, Z) tensor."""
    t = torch.as_tensor(np.asarray(array, dtype=np.float32) if isinstance(array, np.ndarray) else array.float())
    target = tuple(int(s) for s in size)
    if tuple(t.shape) == target:
        return t
    return F.interpolate(t[None, None], size=target, mode="trilinear", align_corners=False)[0, 0]


def window(hu: torch.Tensor, hu_window: tuple[float, float]) -> torch.Tensor:
    """HU clipped to the window and scaled to [0, 1] (the project's ``ScaleIntensityRange`` convention)."""
    return scale_intensity(hu, hu_window)


def pad_to(array: np.ndarray, size: Sequence[int], mode: str) -> np.ndarray:
    """Pad a 3-D array at the end of each axis to ``size``: 'edge' (replicate) or 'constant' (zeros)."""
    extra = [(0, int(s) - int(n)) for s, n in zip(size, array.shape, strict=True)]
    if not any(e for _, e in extra):
        return array
    return np.pad(array, extra, mode="edge" if mode == "edge" else "constant")


def build_input(
    image01: np.ndarray,
    positive: Sequence[Index],
    negative: Sequence[Index],
    previous: np.ndarray | None,
    padded: Sequence[int],
    cfg: InteractiveConfig,
) -> torch.Tensor:
    """(C, *padded) float32 network input from a model-grid image in [0, 1] and clicks/previous on that grid.

    Channels: image, positive and negative Gaussian click maps, the previous mask (``use_previous``), positive and
    negative geodesic maps (``geodesic``). The image is edge-padded, the rest zero-padded, at the end of each axis.
    """
    out = np.zeros((cfg.in_channels, *(int(s) for s in padded)), dtype=np.float32)
    out[0] = pad_to(image01, padded, "edge")
    out[1:3] = click_signal(padded, positive, negative, cfg.sigma)
    nxt = 3
    if cfg.use_previous:
        if previous is not None:
            out[3, : previous.shape[0], : previous.shape[1], : previous.shape[2]] = previous
        nxt = 4
    if cfg.geodesic:
        geo = geodesic_maps(
            image01,
            positive,
            negative,
            cfg.geodesic_gamma,
            cfg.geodesic_tau,
            cfg.geodesic_spatial,
            cfg.geodesic_smooth,
        )
        out[nxt : nxt + 2, : image01.shape[0], : image01.shape[1], : image01.shape[2]] = geo
    return torch.from_numpy(out)
