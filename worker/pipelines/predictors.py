"""Turn a registered model version into a predictor: weights from the blob store, cached per worker process."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from backend.core.blobstore import BlobStore
from backend.core.config import get_settings
from backend.core.errors import InvalidInput, NotFound
from backend.models import Model, ModelVersion
from worker.models.classical import classical_probabilities
from worker.models.inference import InferenceConfig, predict_probabilities
from worker.models.networks import build_network
from worker.models.preprocessing import Preprocessing
from worker.models.training import load_weights

Progress = Callable[[float], None]
Stop = Callable[[], bool]


@dataclass(frozen=True)
class ModelSpec:
    """Plain data of a model version, read from the database before the session closes."""

    name: str
    number: int
    architecture: str
    config: dict[str, Any]
    structures: tuple[str, ...]
    preprocessing: dict[str, Any]
    inference: dict[str, Any]
    weights_digest: str | None

    @classmethod
    def of(cls, model: Model, version: ModelVersion) -> ModelSpec:
        """Snapshot a model and one of its versions."""
        return cls(
            name=model.name,
            number=version.number,
            architecture=model.architecture,
            config=dict(model.config),
            structures=tuple(model.structures),
            preprocessing=dict(model.preprocessing),
            inference=dict(model.inference),
            weights_digest=version.weights_digest,
        )


def _configure_threads() -> None:
    threads = get_settings().torch_threads
    if threads > 0:
        torch.set_num_threads(threads)


# Networks loaded in this worker process, keyed by (architecture, config, outputs, weights digest): weights are
# immutable by digest, so a warm worker neither re-reads the weights blob nor rebuilds the network.
_NETWORKS: OrderedDict[tuple[str, str, int, str], torch.nn.Module] = OrderedDict()
_MAX_NETWORKS = 4


def _network(spec: ModelSpec, blobs: BlobStore, digest: str) -> torch.nn.Module:
    """The model version's network, built and loaded on first use in this process."""
    key = (spec.architecture, json.dumps(spec.config, sort_keys=True), len(spec.structures), digest)
    cached = _NETWORKS.get(key)
    if cached is not None:
        _NETWORKS.move_to_end(key)
        return cached
    try:
        weights = blobs.get_bytes(digest)
    except NotFound as exc:
        raise InvalidInput(
            f"weights of model {spec.name} v{spec.number} ({digest[:12]}…) are missing from the blob store"
        ) from exc
    network = build_network(spec.architecture, spec.config, len(spec.structures))
    load_weights(network, weights)
    network.eval()
    _NETWORKS[key] = network
    while len(_NETWORKS) > _MAX_NETWORKS:
        _NETWORKS.popitem(last=False)
    return network


def inference_config(spec: ModelSpec) -> InferenceConfig:
    """The sliding-window settings of a model (overlap ≥ 0.25, gaussian, AMP on GPU)."""
    raw = spec.inference
    return InferenceConfig(
        roi_size=tuple(int(v) for v in raw.get("roi_size", (96, 96, 96))),  # type: ignore[arg-type]
        overlap=max(0.25, float(raw.get("overlap", 0.25))),
        mode=str(raw.get("mode", "gaussian")),
        sw_batch_size=int(raw.get("sw_batch_size", 1)),
        device=raw.get("device"),
        amp=bool(raw.get("amp", True)),
    )


def predict(
    spec: ModelSpec,
    blobs: BlobStore,
    volume: np.ndarray,
    affine: np.ndarray,
    progress: Progress | None = None,
    should_stop: Stop | None = None,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """Soft probabilities (C, X, Y, Z) in the scan's own geometry for the model's structures."""
    _configure_threads()
    if spec.architecture == "classical":
        if progress:
            progress(0.0)
        probs = classical_probabilities(volume, affine, list(spec.structures))
        if progress:
            progress(1.0)
        return probs
    if not spec.weights_digest:
        raise InvalidInput(f"model {spec.name} v{spec.number} has no weights")
    network = _network(spec, blobs, spec.weights_digest)
    return predict_probabilities(
        network,
        volume,
        affine,
        Preprocessing.from_json(spec.preprocessing),
        inference_config(spec),
        progress=progress,
        should_stop=should_stop,
        timings=timings,
    )
