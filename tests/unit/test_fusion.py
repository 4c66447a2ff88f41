"""Tests for backend.imaging.fusion: majority vote and STAPLE against SimpleITK, pairwise agreement."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from backend.imaging.fusion import dice, majority_vote, pairwise_agreement, staple


def _cube(shape: tuple[int, int, int], lo: tuple[int, int, int], size: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = True
    return mask


def _readers(n: int, seed: int = 0) -> list[np.ndarray]:
    """A sphere-ish truth and n noisy readers: each misses or adds voxels near the boundary."""
    rng = np.random.default_rng(seed)
    grid = np.indices((24, 22, 20)).astype(float)
    radius = np.sqrt(((grid - np.array([12, 11, 10])[:, None, None, None]) ** 2).sum(axis=0))
    masks = []
    for index in range(n):
        noise = rng.normal(0.0, 1.0 + 0.5 * index, size=radius.shape)
        masks.append(radius + noise < 7.0)
    return masks


def _sitk(masks: list[np.ndarray]) -> list[sitk.Image]:
    return [sitk.GetImageFromArray(m.astype(np.uint8)) for m in masks]


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_majority_vote_equals_simpleitk_label_voting(n: int) -> None:
    masks = _readers(n, seed=n)
    expected = sitk.GetArrayFromImage(sitk.LabelVoting(_sitk(masks), 0)).astype(bool)
    fused = majority_vote(masks)
    assert fused.dtype == np.bool_
    np.testing.assert_array_equal(fused, expected)
    # Not a trivial case: the readers disagree somewhere, and the vote differs from the union.
    union = np.logical_or.reduce(masks)
    assert (fused != union).any()


def test_majority_vote_tie_is_outside() -> None:
    shape = (6, 6, 6)
    a = _cube(shape, (0, 0, 0), (4, 4, 4))
    b = _cube(shape, (2, 2, 2), (4, 4, 4))
    fused = majority_vote([a, b])
    # Two readers: 1-1 ties are outside, so the vote is the intersection.
    np.testing.assert_array_equal(fused, a & b)
    assert int(fused.sum()) == 8


def test_staple_equals_simpleitk_staple() -> None:
    masks = _readers(3, seed=11)
    result = staple(masks)
    expected = sitk.GetArrayFromImage(sitk.STAPLE(_sitk(masks), 1.0, 1.0))
    np.testing.assert_allclose(result.probability, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(result.mask, expected > 0.5)
    assert len(result.sensitivity) == 3 and len(result.specificity) == 3
    assert result.iterations >= 1


def test_staple_rates_an_over_segmenting_reader_lower() -> None:
    shape = (20, 20, 20)
    truth = _cube(shape, (5, 5, 5), (10, 10, 10))
    generous = truth | _cube(shape, (2, 2, 2), (16, 16, 16))
    result = staple([truth, truth.copy(), truth.copy(), generous])
    np.testing.assert_array_equal(result.mask, truth)
    sens, spec = result.sensitivity, result.specificity
    assert all(s is not None and s > 0.99 for s in sens)
    assert spec[3] is not None and spec[0] is not None
    # The generous reader marks 4096 - 1000 = 3096 of the 7000 background voxels: specificity ~ 0.558.
    assert spec[3] == pytest.approx(1 - 3096 / 7000, abs=0.01)
    assert spec[0] > 0.99


def test_staple_of_empty_masks_is_empty_with_undefined_rates() -> None:
    empty = np.zeros((4, 4, 4), dtype=bool)
    result = staple([empty, empty.copy()])
    assert not result.mask.any()
    assert result.sensitivity == [None, None]


def test_staple_without_background_falls_back_to_the_mean_vote() -> None:
    full = np.ones((4, 4, 4), dtype=bool)
    partial = full.copy()
    partial[0] = False
    result = staple([full, full.copy(), partial])
    assert np.isfinite(result.probability).all()
    assert result.mask.all()  # 2 of 3 readers everywhere at least
    same = staple([full, full.copy()])
    assert same.mask.all() and same.specificity == [None, None]


def test_pairwise_dice_of_two_overlapping_cubes() -> None:
    shape = (30, 12, 12)
    a = _cube(shape, (0, 1, 1), (10, 10, 10))
    b = _cube(shape, (5, 1, 1), (10, 10, 10))
    c = _cube(shape, (20, 1, 1), (10, 10, 10))
    agreement = pairwise_agreement([a, b, c], (1.0, 1.0, 2.0))
    # a∩b = 5x10x10 = 500 voxels: Dice 2*500/2000 = 0.5; c overlaps neither.
    assert [(p.i, p.j, p.dice) for p in agreement.pairs] == [(0, 1, 0.5), (0, 2, 0.0), (1, 2, 0.0)]
    assert agreement.mean_dice == pytest.approx(0.5 / 3)
    assert agreement.mean_nsd is None and not agreement.nsd_computed
    assert dice(np.zeros(shape, bool), np.zeros(shape, bool)) == 1.0


def test_pairwise_agreement_uses_the_given_surface_metric() -> None:
    shape = (8, 8, 8)
    a = _cube(shape, (0, 0, 0), (4, 4, 4))
    b = _cube(shape, (1, 0, 0), (4, 4, 4))
    seen: list[tuple[float, float, float]] = []

    def fake_nsd(x: np.ndarray, y: np.ndarray, spacing: tuple[float, float, float]) -> float | None:
        seen.append(spacing)
        return None if not y.any() else float(x.sum()) / 100.0

    empty = np.zeros(shape, dtype=bool)
    agreement = pairwise_agreement([a, b, empty], (0.5, 0.5, 2.0), nsd=fake_nsd)
    assert seen == [(0.5, 0.5, 2.0)] * 3
    assert [p.nsd for p in agreement.pairs] == [0.64, None, None]
    assert agreement.mean_nsd == pytest.approx(0.64)
    assert agreement.pairs[0].dice == pytest.approx(2 * 48 / 128)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        majority_vote([np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool)])
    with pytest.raises(ValueError, match="at least 2"):
        staple([np.zeros((2, 2, 2), bool)])
