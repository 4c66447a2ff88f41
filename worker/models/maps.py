"""Compact soft maps: probabilities quantised to uint8, and masks (numpy; torch for threads).

The entropy map is derived from the stored uint8 probability by one table, ``backend.imaging.softmaps.entropy_u8``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "masks_of",
    "quantise_probabilities",
    "quantise_stack",
]


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
