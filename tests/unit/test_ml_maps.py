"""Quantised probability and entropy maps."""

from __future__ import annotations

import numpy as np

from worker.models.inference import binary_entropy, dequantise_unit, quantise_unit
from worker.models.maps import entropy_u8, quantise_probabilities


def test_quantisation_matches_the_reference_and_bounds_the_error() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((3, 20, 20, 10), dtype=np.float32)
    q = quantise_probabilities(probs)
    assert q.dtype == np.uint8
    assert np.array_equal(q, quantise_unit(probs))
    assert np.abs(dequantise_unit(q) - probs).max() <= 1 / 510 + 1e-7


def test_entropy_lookup_equals_the_entropy_of_the_quantised_probability() -> None:
    q = np.arange(256, dtype=np.uint8)
    expected = quantise_unit(binary_entropy(dequantise_unit(q)))
    assert np.abs(entropy_u8(q).astype(int) - expected.astype(int)).max() <= 1
    assert entropy_u8(np.array([0, 255, 128], dtype=np.uint8)).tolist()[:2] == [0, 0]
    assert entropy_u8(np.array([128], dtype=np.uint8))[0] == 255


def test_the_api_knows_what_the_classical_model_finds() -> None:
    from backend.registry.service import CLASSICAL_STRUCTURES as API_SIDE
    from worker.models.classical import CLASSICAL_STRUCTURES as WORKER_SIDE

    assert tuple(API_SIDE) == tuple(WORKER_SIDE)
