r"""The AbdomenAtlas / PanTS attention-map recipe, in pure numpy/scipy.

Per structure, from >= 2 model probability maps:

- inconsistency: voxel standard deviation across the models (population std, ``ddof=0``) > ``std`` (0.1);
- uncertainty: binary entropy of the mean probability > ``entropy`` (0.05). The entropy is the normalised binary
  entropy in bits (log base 2, in [0, 1]: 1 at p = 0.5, 0 at p = 0 or 1), the same as
  ``worker.models.inference.binary_entropy``;
- overlap: voxels where this structure's mean-probability mask (> 0.5) and the mask of a structure it must not
  overlap are both set.

Each of the three maps is cleaned by a 3-D binary erosion then a dilation (``erosion_iterations`` /
``dilation_iterations`` times, 6-connected structuring element, zero border), i.e. an opening by the L1 ball of
radius 2: specks thinner than 5 voxels vanish, and a box keeps the voxels within L1 distance 2 of its
twice-eroded core (box corners and edges are trimmed). The attention map is the union of the three cleaned maps.

Priority (the ranking key, :func:`disagreement_priority`): the maps above say *where* to look; the priority says
*how much* a structure needs a look, weighted by model disagreement so that organ size does not drown it. Per
structure, with ``B_k = p_k > 0.5`` the binarised mask of model ``k``, ``U = ∪ B_k``, ``I = ∩ B_k``, ``m`` the mean
probability, ``h`` the binary entropy above and ``N`` the number of axial slices of the scan in RAS (the voxel axis
most aligned with superior-inferior, whatever the stored orientation):

    D = |U \ I|                      voxels where the binarised models disagree
    H = Σ_{v ∈ U} h(m(v))             soft doubt inside the predicted structure (its boundary, mostly)
    priority = (D + H) / (|U| + N)

i.e. about ``1 − Jaccard`` between the models plus an uncertainty term, relative to the structure's predicted
volume. ``N`` (one voxel per axial slice) is a prior: a few stray voxels of an otherwise empty structure score
near 0, not 1. Every term counts voxels, so the priority is the same for the same scan stored in any orientation;
it lies in [0, 2): a small lesion one model finds and the other misses scores ≈ 1, a large liver both models agree
on ≈ its boundary share (a few hundredths).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from worker.models.inference import binary_entropy

__all__ = [
    "AttentionResult",
    "AttentionThresholds",
    "attention_maps",
    "clean_mask",
    "default_forbidden_overlaps",
    "disagreement_priority",
    "priority_score",
]

_CROSS = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class AttentionThresholds:
    """Thresholds and cleaning of the attention recipe (PanTS values by default)."""

    std: float = 0.1
    entropy: float = 0.05
    erosion_iterations: int = 2
    dilation_iterations: int = 2


@dataclass(frozen=True, eq=False)
class AttentionResult:
    """One structure's attention map (bool) and the voxel counts of its cleaned parts."""

    mask: np.ndarray
    inconsistency_voxels: int
    uncertainty_voxels: int
    overlap_voxels: int
    attention_voxels: int
    disagreement_voxels: int = 0
    uncertainty_mass: float = 0.0
    predicted_voxels: int = 0


def clean_mask(mask: np.ndarray, erosion_iterations: int, dilation_iterations: int) -> np.ndarray:
    """Binary erosion then dilation with the 6-connected 3-D structuring element (voxels outside count as 0)."""
    out = np.asarray(mask, dtype=bool)
    if erosion_iterations > 0 and out.any():
        out = ndimage.binary_erosion(out, structure=_CROSS, iterations=erosion_iterations)
    if dilation_iterations > 0 and out.any():
        out = ndimage.binary_dilation(out, structure=_CROSS, iterations=dilation_iterations)
    return np.asarray(out, dtype=bool)


def attention_maps(
    probabilities: Mapping[str, Sequence[np.ndarray]],
    structure_names: Sequence[str],
    overlap_forbidden: Sequence[tuple[str, str]],
    thresholds: AttentionThresholds = AttentionThresholds(),
) -> dict[str, AttentionResult]:
    """Attention map per structure of ``structure_names`` from each structure's list of model probability maps."""
    names = list(structure_names)
    shape: tuple[int, ...] | None = None
    means: dict[str, np.ndarray] = {}
    stds: dict[str, np.ndarray] = {}
    agreement: dict[str, tuple[int, float, int]] = {}
    for name in names:
        maps = probabilities.get(name)
        if maps is None:
            raise ValueError(f"no probability maps for structure {name!r}")
        if len(maps) < 2:
            raise ValueError(f"structure {name!r} needs at least two model probability maps, got {len(maps)}")
        stack = np.stack([np.asarray(m, dtype=np.float32) for m in maps])
        if shape is None:
            shape = stack.shape[1:]
        if stack.shape[1:] != shape:
            raise ValueError(f"probability maps of {name!r} have shape {stack.shape[1:]}, expected {shape}")
        means[name] = stack.mean(axis=0)
        stds[name] = stack.std(axis=0)
        binary = stack > 0.5
        union, inter = binary.any(axis=0), binary.all(axis=0)
        agreement[name] = (
            int(union.sum() - inter.sum()),
            float(binary_entropy(means[name][union]).sum(dtype=np.float64)),
            int(union.sum()),
        )
    claimed = {name: means[name] > 0.5 for name in names}
    partners: dict[str, set[str]] = {name: set() for name in names}
    for a, b in overlap_forbidden:
        if a in partners and b in partners and a != b:
            partners[a].add(b)
            partners[b].add(a)

    t = thresholds
    results: dict[str, AttentionResult] = {}
    for name in names:
        inconsistency = clean_mask(stds[name] > t.std, t.erosion_iterations, t.dilation_iterations)
        uncertainty = clean_mask(binary_entropy(means[name]) > t.entropy, t.erosion_iterations, t.dilation_iterations)
        others = np.zeros(claimed[name].shape, dtype=bool)
        for other in sorted(partners[name]):
            others |= claimed[other]
        overlap = clean_mask(claimed[name] & others, t.erosion_iterations, t.dilation_iterations)
        mask = inconsistency | uncertainty | overlap
        results[name] = AttentionResult(
            mask=mask,
            inconsistency_voxels=int(inconsistency.sum()),
            uncertainty_voxels=int(uncertainty.sum()),
            overlap_voxels=int(overlap.sum()),
            attention_voxels=int(mask.sum()),
            disagreement_voxels=agreement[name][0],
            uncertainty_mass=agreement[name][1],
            predicted_voxels=agreement[name][2],
        )
    return results


def priority_score(attention_voxels: int, slice_count: int) -> float:
    """Attention volume normalised by the scan's slice count (the PanTS ranking key; higher = review first)."""
    if slice_count <= 0:
        raise ValueError(f"slice_count must be positive, got {slice_count}")
    if attention_voxels < 0:
        raise ValueError(f"attention_voxels must be >= 0, got {attention_voxels}")
    return float(attention_voxels) / float(slice_count)


def disagreement_priority(result: AttentionResult, axial_slices: int) -> float:
    """(D + H) / (|U| + N): model disagreement relative to the predicted volume (the module docstring's formula)."""
    if axial_slices <= 0:
        raise ValueError(f"axial_slices must be positive, got {axial_slices}")
    numerator = float(result.disagreement_voxels) + float(result.uncertainty_mass)
    return numerator / float(result.predicted_voxels + axial_slices)


def _ancestors(name: str, parents: Mapping[str, str]) -> set[str]:
    """All ``inside`` ancestors of a structure (cycle-safe)."""
    out: set[str] = set()
    cur = parents.get(name)
    while cur is not None and cur not in out:
        out.add(cur)
        cur = parents.get(cur)
    return out


def default_forbidden_overlaps(
    structure_names: Sequence[str],
    parents: Mapping[str, str] | None = None,
    free: Sequence[str] = ("veins",),
    inner: Sequence[str] = ("pancreatic_duct", "pancreatic_lesion"),
) -> list[tuple[str, str]]:
    """Pairs of structures that must not overlap, each pair once, in ``structure_names`` order.

    Allowed to overlap (left out): a structure and any of its ``inside`` ancestors (``parents``: child -> parent,
    e.g. pancreas_head -> pancreas); any pair involving a ``free`` structure (PanTS ``veins`` overlaps organs);
    an ``inner`` structure (lying inside one of the parts, e.g. the lesion or duct) and a sibling sharing an
    ancestor. Siblings that partition their parent (pancreas_head/body/tail) must not overlap.
    """
    parent_of = dict(parents or {})
    free_set = set(free)
    inner_set = set(inner)
    names = list(dict.fromkeys(structure_names))
    anc = {n: _ancestors(n, parent_of) for n in names}
    pairs: list[tuple[str, str]] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if a in free_set or b in free_set:
                continue
            if a in anc[b] or b in anc[a]:
                continue
            if (a in inner_set or b in inner_set) and anc[a] & anc[b]:
                continue
            pairs.append((a, b))
    return pairs
