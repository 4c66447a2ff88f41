"""Priorities that mean disagreement: orientation-free, and not drowned by organ size (issue 19, item 2)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from backend.imaging.phantom import generate_phantom
from backend.registry.service.attention import axial_slice_count
from worker.models.attention import attention_maps, disagreement_priority, priority_score

SPACING = (4.0, 4.0, 5.0)


def _soft(mask: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """A model-like probability map: the mask with a soft boundary."""
    return np.clip(ndimage.gaussian_filter(mask.astype(np.float32), sigma), 0.0, 1.0)


def _priorities(orientation: str) -> dict[str, float]:
    """Both 'models' of one phantom in the given storage orientation -> priority per structure."""
    if orientation == "RAS":
        phantom = generate_phantom((48, 40, 24), SPACING, seed=3)
    else:  # the same scan stored IPL: axes reversed (and flipped), shape and spacing in the stored order
        phantom = generate_phantom((24, 40, 48), SPACING[::-1], seed=3, orientation=orientation)
    names = ["liver", "spleen", "pancreas"]
    shifted = {name: np.roll(phantom.masks[name], 2, axis=0) for name in names}  # model B errs along an axis
    if orientation != "RAS":
        shifted = {name: np.roll(phantom.masks[name], -2, axis=2) for name in names}  # the same axis, stored IPL
    probabilities = {name: [_soft(phantom.masks[name]), _soft(shifted[name])] for name in names}
    results = attention_maps(probabilities, names, [])
    slices = axial_slice_count(phantom.volume.shape, phantom.affine.tolist())
    return {name: disagreement_priority(result, slices) for name, result in results.items()}


def test_axial_slices_are_counted_in_ras_whatever_the_stored_orientation() -> None:
    ras = generate_phantom((48, 40, 24), SPACING, seed=1)
    ipl = generate_phantom((24, 40, 48), SPACING[::-1], seed=1, orientation="IPL")
    assert axial_slice_count(ras.volume.shape, ras.affine.tolist()) == 24
    assert axial_slice_count(ipl.volume.shape, ipl.affine.tolist()) == 24
    # The old key (attention voxels / shape[2]) differs between the two copies of one scan.
    assert priority_score(100, ras.volume.shape[2]) != priority_score(100, ipl.volume.shape[2])


def test_the_same_scan_in_ras_and_ipl_gets_the_same_priority() -> None:
    ras, ipl = _priorities("RAS"), _priorities("IPL")
    assert set(ras) == set(ipl)
    for name in ras:
        assert ras[name] > 0
        assert ipl[name] == pytest.approx(ras[name], rel=1e-6), name


def test_a_small_disagreed_structure_ranks_above_a_large_agreed_one() -> None:
    shape = (48, 48, 32)
    zz, yy, xx = np.indices(shape)
    large = (zz - 24) ** 2 + (yy - 24) ** 2 + (xx - 16) ** 2 < 14**2  # a liver both models agree on
    small = (zz - 8) ** 2 + (yy - 8) ** 2 + (xx - 8) ** 2 < 3**2  # a lesion one model misses
    probabilities = {
        "liver": [_soft(large), _soft(large) * 0.97],
        "pancreatic_lesion": [_soft(small), np.zeros(shape, dtype=np.float32)],
    }
    results = attention_maps(probabilities, list(probabilities), [])
    big, tiny = (disagreement_priority(results[n], shape[2]) for n in ("liver", "pancreatic_lesion"))
    assert tiny > big
    assert tiny > 0.5 and tiny > 2 * big
    # The old key follows organ size: the large structure got more attention voxels.
    assert results["liver"].attention_voxels > results["pancreatic_lesion"].attention_voxels
    # Nothing predicted by either model: priority 0.
    empty = attention_maps({"x": [np.zeros(shape, np.float32)] * 2}, ["x"], [])
    assert disagreement_priority(empty["x"], shape[2]) == 0.0
    with pytest.raises(ValueError):
        disagreement_priority(empty["x"], 0)
