"""Segmentation networks by architecture name: one output channel per structure, sigmoid (multi-label) outputs.

Each architecture's builder lives with its predictor (``worker.models.predictors``); this is the by-name door that
training and the bundled phantom model use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from worker.models import predictors
from worker.models.predictors import NetworkPredictor

__all__ = ["ARCHITECTURES", "build_network", "count_parameters", "network_predictor"]


def network_predictor(architecture: str) -> NetworkPredictor:
    """The registered predictor of a network architecture (``ValueError`` if unknown or weightless)."""
    predictor = predictors.get(architecture)
    if not isinstance(predictor, NetworkPredictor):
        raise ValueError(f"architecture {architecture!r} has no network to build or train")
    return predictor


# The network architectures registered when this module is first imported (the bundled ones, at least).
ARCHITECTURES: tuple[str, ...] = tuple(
    name for name in predictors.architectures() if isinstance(predictors.get(name), NetworkPredictor)
)


def build_network(architecture: str, config: Mapping[str, Any], out_channels: int) -> torch.nn.Module:
    """Build a 3-D single-input-channel network with ``out_channels`` logit channels (apply sigmoid, not softmax)."""
    if out_channels < 1:
        raise ValueError(f"out_channels must be >= 1, got {out_channels}")
    return network_predictor(architecture.lower()).build(config, out_channels)


def count_parameters(network: torch.nn.Module) -> int:
    """Number of trainable parameters of a network."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad)
