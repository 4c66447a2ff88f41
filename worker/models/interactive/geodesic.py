"""Geodesic click maps (DeepIGeoS-style guidance): how far each voxel is from the clicks *through the image*.

The distance of a path is ``Σ sqrt(w² · step² + γ² · ΔI²)`` over its steps (``ΔI``: the change of the lightly
smoothed [0, 1] image), so crossing an organ's edge costs as much as a long walk inside it. It is computed with the
raster scan of GeoS / FastGeodis (Criminisi et al. 2008; Asad et al. 2022): forward and backward sweeps along each
axis, each voxel updated from its neighbours in the previous slice (the voxel itself and its 4 in-plane
neighbours), the positive and the negative clicks in one pass. The channels are ``exp(-d / τ)``: 1 at a click,
small beyond an edge or far away, all 0 without clicks. DeepGrow's Gaussian click maps stay as they are; these two
channels are added to them, so the network need not learn region growing from scratch on a CPU budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["geodesic_distance", "geodesic_maps"]

Index = tuple[int, int, int]
_OFFSETS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def _sweep(dist: np.ndarray, image: np.ndarray, gamma2: np.float32, w2: np.float32, reverse: bool) -> None:
    """One sweep along axis 1 of ``dist`` (C, n, nj, nk), in place, from the previous slice's neighbours."""
    _, n, nj, nk = dist.shape
    order = range(n - 2, -1, -1) if reverse else range(1, n)
    step = 1 if reverse else -1
    pad_d = np.full((dist.shape[0], nj + 2, nk + 2), np.inf, dtype=np.float32)
    pad_i = np.zeros((nj + 2, nk + 2), dtype=np.float32)
    spatial = {o: w2 * np.float32(1 + o[0] * o[0] + o[1] * o[1]) for o in _OFFSETS}
    for i in order:
        pad_d[:, 1:-1, 1:-1] = dist[:, i + step]
        pad_i[1:-1, 1:-1] = image[i + step]
        cur = dist[:, i]
        img = image[i]
        for o in _OFFSETS:
            diff = img - pad_i[1 + o[0] : 1 + o[0] + nj, 1 + o[1] : 1 + o[1] + nk]
            cost = np.sqrt(spatial[o] + gamma2 * diff * diff)
            np.minimum(cur, pad_d[:, 1 + o[0] : 1 + o[0] + nj, 1 + o[1] : 1 + o[1] + nk] + cost, out=cur)


def geodesic_distance(
    image: np.ndarray,
    seed_sets: Sequence[Sequence[Index]],
    gamma: float,
    spatial: float = 1.0,
    smooth: float = 1.0,
    iterations: int = 1,
) -> np.ndarray:
    """(C, *shape) geodesic distances from each set of seeds over a 3-D image in [0, 1] (step cost
    ``sqrt(spatial² + γ² ΔI²)``, the image Gaussian-smoothed by ``smooth`` voxels first); ``inf`` where unreached."""
    dist = np.full((len(seed_sets), *image.shape), np.inf, dtype=np.float32)
    if not any(seed_sets):
        return dist
    img = ndimage.gaussian_filter(image.astype(np.float32), smooth) if smooth > 0 else image.astype(np.float32)
    for c, seeds in enumerate(seed_sets):
        for p in seeds:
            dist[(c, *p)] = 0.0
    gamma2, w2 = np.float32(gamma * gamma), np.float32(spatial * spatial)
    for _ in range(iterations):
        for axis in range(3):
            d = np.moveaxis(dist, axis + 1, 1)
            im = np.moveaxis(img, axis, 0)
            _sweep(d, im, gamma2, w2, reverse=False)
            _sweep(d, im, gamma2, w2, reverse=True)
    return dist


def geodesic_maps(
    image: np.ndarray,
    positive: Sequence[Index],
    negative: Sequence[Index],
    gamma: float,
    tau: float,
    spatial: float = 1.0,
    smooth: float = 1.0,
) -> np.ndarray:
    """(2, *shape) float32: ``exp(-d / tau)`` of the geodesic distance to the positive and to the negative clicks."""

    def inside(points: Sequence[Index]) -> list[Index]:
        return [
            (int(p[0]), int(p[1]), int(p[2]))
            for p in points
            if all(0 <= int(v) < n for v, n in zip(p, image.shape, strict=True))
        ]

    dist = geodesic_distance(image, [inside(positive), inside(negative)], gamma, spatial, smooth)
    dist /= np.float32(-tau)
    return np.exp(dist, out=dist)
