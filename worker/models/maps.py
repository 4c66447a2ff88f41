"""Compact soft maps: probabilities and their binary entropy quantised to uint8 (pure numpy)."""

from __future__ import annotations

import numpy as np

__all__ = ["ENTROPY_OF_QUANTISED", "entropy_u8", "quantise_for_nifti", "quantise_probabilities"]


def _entropy_table() -> np.ndarray:
    """Binary entropy (log2, in [0, 1]) of each quantised probability q/255, itself quantised to uint8."""
    p = np.arange(256, dtype=np.float64) / 255.0
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    h = np.nan_to_num(h, nan=0.0)
    return np.round(h * 255.0).astype(np.uint8)


# Entropy is a fixed function of the probability: a 256-entry lookup is exact for the stored quantised maps and
# a hundred times cheaper than logarithms over every voxel.
ENTROPY_OF_QUANTISED = _entropy_table()


def quantise_probabilities(probs: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as uint8 (p * 255, rounded), computed in place-friendly float32."""
    scaled = np.multiply(probs, np.float32(255.0), dtype=np.float32)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)


_SLAB = 4  # x-planes per step of ``quantise_for_nifti``: a float32 slab of a 512x512 slice stays cache-sized


def quantise_for_nifti(probs: np.ndarray) -> np.ndarray:
    """``quantise_probabilities`` of one (X, Y, Z) map, laid out x-fastest (Fortran order) as NIfTI stores voxels.

    A C-ordered network output would otherwise be transposed when written, a cache-hostile copy that costs more
    than the quantisation itself; here each slab of a few x-planes is quantised and transposed while cache-hot.
    """
    if probs.ndim != 3:
        raise ValueError(f"expected one (X, Y, Z) map, got shape {probs.shape}")
    nx, ny, nz = probs.shape
    transposed = np.empty((nz, ny, nx), dtype=np.uint8)
    scratch = np.empty((min(_SLAB, nx), ny, nz), dtype=np.float32)
    for start in range(0, nx, _SLAB):
        slab = probs[start : start + _SLAB]
        scaled = scratch[: slab.shape[0]]
        np.multiply(slab, np.float32(255.0), out=scaled, dtype=np.float32)
        np.clip(scaled, 0.0, 255.0, out=scaled)
        np.rint(scaled, out=scaled)
        transposed[:, :, start : start + _SLAB] = scaled.T
    return transposed.T


def entropy_u8(quantised: np.ndarray) -> np.ndarray:
    """The uint8 entropy map of a uint8 probability map (255 = one bit, maximal doubt)."""
    return ENTROPY_OF_QUANTISED[quantised]
