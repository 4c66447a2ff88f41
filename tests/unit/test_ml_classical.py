"""The weightless classical pre-annotator on default phantoms."""

from __future__ import annotations

import numpy as np
import pytest

from backend.imaging.phantom import generate_phantom
from worker.models.classical import CLASSICAL_STRUCTURES, classical_probabilities
from worker.models.inference import binary_entropy


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


@pytest.mark.parametrize("seed", [0, 7])
def test_liver_and_lungs_dice_on_default_phantoms(seed: int) -> None:
    ph = generate_phantom((96, 96, 64), (3.5, 3.5, 4.0), seed=seed)
    names = ["liver", "lung_left", "lung_right", "spleen", "aorta"]
    probs = classical_probabilities(ph.volume, ph.affine, names)
    assert probs.shape == (len(names), *ph.volume.shape)
    assert probs.dtype == np.float32
    assert float(probs.min()) >= 0.0 and float(probs.max()) <= 1.0
    dice = {n: _dice(probs[i] > 0.5, ph.masks[n]) for i, n in enumerate(names)}
    assert dice["liver"] > 0.7, dice
    assert dice["lung_left"] > 0.7, dice
    assert dice["lung_right"] > 0.7, dice
    # measured >= 0.9 for these on seeds 0..4; a looser bound keeps the test about regressions, not tuning
    assert dice["spleen"] > 0.7 and dice["aorta"] > 0.7, dice
    # soft scores: region borders are uncertain, organ interiors and the far background are not
    h = binary_entropy(probs[0])
    assert float(h.max()) > 0.5
    assert float(np.median(h[ph.masks["liver"]])) < 0.5


def test_orientation_does_not_change_the_answer() -> None:
    ras = generate_phantom((64, 64, 40), (5.0, 5.0, 6.5), seed=1, orientation="RAS")
    lps = generate_phantom((64, 64, 40), (5.0, 5.0, 6.5), seed=1, orientation="LPS")
    p_ras = classical_probabilities(ras.volume, ras.affine, ["liver", "kidney_left"])
    p_lps = classical_probabilities(lps.volume, lps.affine, ["liver", "kidney_left"])
    # LPS flips the first two axes of the RAS array
    assert np.allclose(p_lps, p_ras[:, ::-1, ::-1, :], atol=1e-6)
    assert _dice(p_lps[0] > 0.5, lps.masks["liver"]) > 0.7


def test_unknown_structure_rejected() -> None:
    ph = generate_phantom((16, 16, 8), (20.0, 20.0, 30.0), seed=0)
    with pytest.raises(ValueError, match="pancreas"):
        classical_probabilities(ph.volume, ph.affine, ["pancreas"])
    assert "liver" in CLASSICAL_STRUCTURES
