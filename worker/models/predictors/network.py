"""Predictors of trainable networks: build, load the version's weights, sliding-window inference with sigmoid."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from worker.models.inference import InferenceConfig, predict_probabilities
from worker.models.predictors.base import ArchitectureTraits, Hooks, ModelSpec
from worker.models.preprocessing import Preprocessing
from worker.models.training import load_weights


class NetworkPredictor(ABC):
    """A MONAI-style network with one sigmoid output channel per structure; subclasses only say how to build it.

    The training pipeline builds, trains and saves these through ``build`` too, so a trainable architecture is
    one subclass and one ``register`` call.
    """

    traits: ArchitectureTraits

    @abstractmethod
    def build(self, config: Mapping[str, Any], out_channels: int) -> torch.nn.Module:
        """A 3-D single-input-channel network with ``out_channels`` logit channels, from the model's config."""

    def prepare(self, spec: ModelSpec, weights: bytes | None) -> torch.nn.Module:
        """The version's network with its weights loaded, in eval mode."""
        if weights is None:
            raise ValueError(f"model {spec.name} v{spec.number} has no weights")
        network = self.build(spec.config, len(spec.structures))
        load_weights(network, weights)
        network.eval()
        return network

    def predict(
        self, prepared: torch.nn.Module, spec: ModelSpec, volume: np.ndarray, affine: np.ndarray, hooks: Hooks
    ) -> np.ndarray:
        """Sigmoid probabilities on the scan grid (model-space sliding window, resampled back)."""
        return predict_probabilities(
            prepared,
            volume,
            affine,
            Preprocessing.from_json(spec.preprocessing),
            InferenceConfig.from_settings(spec.inference),
            progress=hooks.progress,
            should_stop=hooks.should_stop,
            timings=hooks.timings,
        )

    def postprocess(self, raw: np.ndarray, spec: ModelSpec) -> np.ndarray:
        """Already probabilities in [0, 1] on the scan grid (``predict_probabilities`` clips them)."""
        return raw
