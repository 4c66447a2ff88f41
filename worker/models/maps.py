"""Compact soft maps: probabilities and their binary entropy quantised to uint8 (numpy; torch for threads)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "ENTROPY_OF_QUANTISED",
    "entropy_u8",
    "masks_of",
    "quantise_probabilities",
    "quantise_stack",
]


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


def quantise_stack(probs: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
    """``quantise_probabilities`` of a whole float32 stack, C-ordered, on torch's intra-op threads.

    numpy runs each elementwise pass on one core; after inference the worker's other cores are idle, and this step
    sits between the sliding window and the committed version. Same product, clipping and rounding (half to even)
    as ``quantise_probabilities``, so the values are identical. ``overwrite`` lets it use ``probs`` as scratch
    (no second float32 stack to allocate).
    """
    tensor = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))
    scaled = tensor.mul_(255.0) if overwrite else tensor.mul(255.0)
    return np.asarray(scaled.clamp_(0.0, 255.0).round_().to(torch.uint8).numpy())


def masks_of(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean masks ``probs > threshold`` of a float32 stack, on torch's intra-op threads (numpy uses one core)."""
    tensor = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))
    return np.asarray(tensor.gt(threshold).numpy())


def entropy_u8(quantised: np.ndarray) -> np.ndarray:
    """The uint8 entropy map of a uint8 probability map (255 = one bit, maximal doubt)."""
    return ENTROPY_OF_QUANTISED[quantised]
