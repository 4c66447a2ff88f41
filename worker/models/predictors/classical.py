"""The weightless classical pre-annotator (HU thresholds, connected components, position priors) as a predictor."""

from __future__ import annotations

import numpy as np

from worker.models.classical import classical_probabilities
from worker.models.predictors.base import Hooks, ModelSpec, register, traits_of


class ClassicalPredictor:
    """No weights and nothing to prepare; the whole scan is one unit of work."""

    traits = traits_of("classical")

    def prepare(self, spec: ModelSpec, weights: bytes | None) -> None:
        """Nothing: the thresholds are code."""
        return None

    def predict(
        self, prepared: None, spec: ModelSpec, volume: np.ndarray, affine: np.ndarray, hooks: Hooks
    ) -> np.ndarray:
        """Soft scores per structure in the scan's own axis order."""
        if hooks.progress:
            hooks.progress(0.0)
        probs = classical_probabilities(volume, affine, list(spec.structures))
        if hooks.progress:
            hooks.progress(1.0)
        return probs

    def postprocess(self, raw: np.ndarray, spec: ModelSpec) -> np.ndarray:
        """Already float32 scores in [0, 1]."""
        return raw


register(ClassicalPredictor())
