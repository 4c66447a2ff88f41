"""Progressive merge (FocalClick, Chen et al. 2022): a correction click changes the mask only where it asks to.

Without it, every answer replaces the whole region, so a click that fixes one missed part can shrink or grow the
structure elsewhere ("later clicks fight the previous mask"). With it, the new answer is compared with the
previous mask; of the connected regions where they differ, only those holding a click that the change now honours
(a positive click newly inside, a negative click newly outside) are taken; the rest of the previous mask is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["progressive_merge"]

Index = tuple[int, int, int]
_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)  # face neighbours: a thin shell shift stays apart


def progressive_merge(
    new: np.ndarray,
    previous: np.ndarray,
    positive: Sequence[Index],
    negative: Sequence[Index],
    *,
    fallback_to_new: bool = True,
    opening: int = 0,
) -> np.ndarray:
    """``previous`` with the components of ``new XOR previous`` that honour a click taken from ``new`` (bool masks).

    Clicks are indices into the masks' grid (those outside are ignored). When the answer honours no click it did
    not already, the whole ``new`` mask is returned (``fallback_to_new``) or the previous one. ``opening`` > 0
    first opens the difference by that many voxels, so that a thin shell (the answer's edge moved by a voxel or
    two all round) does not join the clicked part; what is taken is then the clicked cores grown back by as much,
    inside the difference.
    """
    new = np.asarray(new, dtype=bool)
    previous = np.asarray(previous, dtype=bool)
    diff = new ^ previous
    if not diff.any():
        return new
    core = ndimage.binary_opening(diff, structure=_CONNECTIVITY, iterations=opening) if opening > 0 else diff
    taken = _clicked_components(core, new, positive, negative)
    if taken is None and opening > 0:  # a click in a thin part of the change: the change as it is
        taken = _clicked_components(diff, new, positive, negative)
    elif taken is not None and opening > 0:
        taken = ndimage.binary_dilation(taken, structure=_CONNECTIVITY, iterations=opening) & diff
    if taken is None:
        return new if fallback_to_new else previous
    return np.where(taken, new, previous)


def _clicked_components(
    diff: np.ndarray, new: np.ndarray, positive: Sequence[Index], negative: Sequence[Index]
) -> np.ndarray | None:
    """The components of ``diff`` holding a click that ``new`` honours there; None when there are none."""
    labels, _ = ndimage.label(diff, structure=_CONNECTIVITY)
    keep: set[int] = set()
    for points, wanted in ((positive, True), (negative, False)):
        for p in points:
            if not all(0 <= int(v) < n for v, n in zip(p, diff.shape, strict=True)):
                continue
            q = (int(p[0]), int(p[1]), int(p[2]))
            if diff[q] and bool(new[q]) == wanted:
                keep.add(int(labels[q]))
    if not keep:
        return None
    return np.isin(labels, sorted(keep))
