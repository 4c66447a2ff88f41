"""Fusing several readers' binary masks of one structure (majority vote, STAPLE) and their agreement.

Pure numpy/SimpleITK code with no database. Every function takes masks of one structure on one voxel grid
(same shape, boolean or 0/1).

Dice policy (PanTS): 1.0 when both masks are empty, 0.0 when exactly one is.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

# A surface metric between two masks: (mask_a, mask_b, spacing_mm) -> value, or None when undefined.
SurfaceMetric = Callable[[np.ndarray, np.ndarray, tuple[float, float, float]], float | None]


def _check(masks: Sequence[np.ndarray], minimum: int) -> list[np.ndarray]:
    """Validate a stack of masks (count, shape, 3D) and return them as boolean arrays."""
    if len(masks) < minimum:
        raise ValueError(f"need at least {minimum} masks, got {len(masks)}")
    arrays = [np.asarray(m) for m in masks]
    shape = arrays[0].shape
    if len(shape) != 3:
        raise ValueError(f"masks must be 3D, got shape {shape}")
    for index, arr in enumerate(arrays):
        if arr.shape != shape:
            raise ValueError(f"mask {index} has shape {arr.shape}, mask 0 has {shape}")
    return [a if a.dtype == np.bool_ else a > 0 for a in arrays]


def majority_vote(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Strict majority: a voxel is inside when more than half of the readers mark it.

    Tie rule: with an even number of readers a tie (exactly half) is outside, so two readers fuse to their
    intersection. This equals SimpleITK's ``LabelVoting`` on {0, 1} masks with undecided voxels set to 0.
    """
    arrays = _check(masks, 1)
    votes = np.zeros(arrays[0].shape, dtype=np.uint16)
    for arr in arrays:
        votes += arr
    return np.asarray(votes * 2 > len(arrays), dtype=bool)


@dataclass(frozen=True)
class StapleResult:
    """STAPLE's estimate: the fused mask (probability > 0.5), the probability map and each reader's quality."""

    mask: np.ndarray
    probability: np.ndarray
    sensitivity: list[float | None]
    specificity: list[float | None]
    iterations: int


def staple(
    masks: Sequence[np.ndarray],
    *,
    confidence_weight: float = 1.0,
    maximum_iterations: int = 1000,
    threshold: float = 0.5,
) -> StapleResult:
    """Binary STAPLE (Warfield et al. 2004) through SimpleITK's ``STAPLEImageFilter`` on the whole grid.

    The fused mask holds the voxels whose estimated probability of being inside exceeds `threshold`. When
    every input is empty, the result is empty and the readers' sensitivity and specificity are undefined
    (None); the estimate is not run. When the estimate is undefined (NaN, e.g. no background at all), the
    probability is the readers' mean vote and the undefined rates are None.
    """
    arrays = _check(masks, 2)
    shape = arrays[0].shape
    if not any(bool(a.any()) for a in arrays):
        empty = np.zeros(shape, dtype=bool)
        none: list[float | None] = [None] * len(arrays)
        return StapleResult(empty, np.zeros(shape, dtype=np.float32), list(none), list(none), 0)
    images = [sitk.GetImageFromArray(a.astype(np.uint8)) for a in arrays]
    fuser = sitk.STAPLEImageFilter()
    fuser.SetForegroundValue(1.0)
    fuser.SetConfidenceWeight(float(confidence_weight))
    fuser.SetMaximumIterations(int(maximum_iterations))
    probability = sitk.GetArrayFromImage(fuser.Execute(images)).astype(np.float32)
    if not np.all(np.isfinite(probability)):
        # Degenerate input (e.g. every voxel inside for every reader: no background to estimate specificity
        # from): the estimate is undefined, so fall back to the readers' mean vote.
        probability = np.asarray(np.mean(np.stack(arrays), axis=0, dtype=np.float64), dtype=np.float32)
    return StapleResult(
        mask=np.asarray(probability > threshold, dtype=bool),
        probability=probability,
        sensitivity=[_finite(v) for v in fuser.GetSensitivity()],
        specificity=[_finite(v) for v in fuser.GetSpecificity()],
        iterations=int(fuser.GetElapsedIterations()),
    )


def _finite(value: float) -> float | None:
    """A rate, or None when the estimate is undefined (NaN)."""
    return float(value) if np.isfinite(value) else None


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice similarity of two boolean masks (1.0 when both are empty)."""
    count_a, count_b = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    if count_a + count_b == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / (count_a + count_b)


@dataclass(frozen=True)
class PairAgreement:
    """Agreement of readers i and j (indices into the input list)."""

    i: int
    j: int
    dice: float
    nsd: float | None


@dataclass(frozen=True)
class Agreement:
    """Mean pairwise Dice (and NSD when a surface metric was given) over every pair of readers."""

    mean_dice: float
    mean_nsd: float | None
    pairs: list[PairAgreement]
    nsd_computed: bool


def pairwise_agreement(
    masks: Sequence[np.ndarray],
    spacing: Sequence[float],
    nsd: SurfaceMetric | None = None,
) -> Agreement:
    """Dice (and NSD through `nsd`, e.g. the area-weighted metric of ``backend.evaluation.metrics``) per pair.

    Without `nsd` only Dice is computed and `mean_nsd` is None. A pair whose NSD is undefined (one mask
    empty) is left out of the NSD mean; the mean is None when no pair has one.
    """
    arrays = _check(masks, 2)
    if len(spacing) != 3 or min(float(s) for s in spacing) <= 0:
        raise ValueError(f"spacing must hold three positive values, got {list(spacing)}")
    sp = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    pairs = []
    for i, j in itertools.combinations(range(len(arrays)), 2):
        value = nsd(arrays[i], arrays[j], sp) if nsd is not None else None
        pairs.append(PairAgreement(i=i, j=j, dice=dice(arrays[i], arrays[j]), nsd=value))
    nsd_values = [p.nsd for p in pairs if p.nsd is not None]
    return Agreement(
        mean_dice=float(np.mean([p.dice for p in pairs])),
        mean_nsd=float(np.mean(nsd_values)) if nsd_values else None,
        pairs=pairs,
        nsd_computed=nsd is not None,
    )
