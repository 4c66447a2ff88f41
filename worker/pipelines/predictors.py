"""Run a registered model version's predictor: look it up by architecture, prepare it once per worker process."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from backend.core.blobstore import BlobStore
from backend.core.config import get_settings
from backend.core.errors import InvalidInput, NotFound
from backend.models import Model, ModelVersion
from worker.models import predictors
from worker.models.predictors import Hooks, ModelSpec, Predictor

__all__ = ["ModelSpec", "load_configured_predictors", "predict", "spec_of"]

Progress = Callable[[float], None]
Stop = Callable[[], bool]


def spec_of(model: Model, version: ModelVersion) -> ModelSpec:
    """Snapshot a model and one of its versions as plain data."""
    return ModelSpec(
        name=model.name,
        number=version.number,
        architecture=model.architecture,
        config=dict(model.config),
        structures=tuple(model.structures),
        preprocessing=dict(model.preprocessing),
        inference=dict(model.inference),
        weights_digest=version.weights_digest,
    )


def load_configured_predictors() -> list[str]:
    """Import the modules named in ``MASKLOOP_PREDICTOR_MODULES`` so their predictors register (worker start)."""
    return predictors.load_modules(get_settings().predictor_modules)


def _configure_threads() -> None:
    threads = get_settings().torch_threads
    if threads > 0:
        torch.set_num_threads(threads)


# What ``prepare`` returned (a loaded network…), keyed by (predictor, architecture, config, outputs, weights digest):
# weights are immutable by digest, so a warm worker neither re-reads the weights blob nor rebuilds the network; a
# predictor registered anew (a test's) never sees another one's state.
_PREPARED: OrderedDict[tuple[int, str, str, int, str], Any] = OrderedDict()
_MAX_PREPARED = 4


def _prepared(predictor: Predictor, spec: ModelSpec, blobs: BlobStore) -> Any:
    """The version's prepared predictor state, built on first use in this process."""
    digest = spec.weights_digest or ""
    key = (id(predictor), spec.architecture, json.dumps(spec.config, sort_keys=True), len(spec.structures), digest)
    if key in _PREPARED:
        _PREPARED.move_to_end(key)
        return _PREPARED[key]
    weights = None
    if digest:
        try:
            weights = blobs.get_bytes(digest)
        except NotFound as exc:
            raise InvalidInput(
                f"weights of model {spec.name} v{spec.number} ({digest[:12]}…) are missing from the blob store"
            ) from exc
    prepared = predictor.prepare(spec, weights)
    _PREPARED[key] = prepared
    while len(_PREPARED) > _MAX_PREPARED:
        _PREPARED.popitem(last=False)
    return prepared


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
    try:
        predictor = predictors.get(spec.architecture)
    except predictors.UnknownArchitecture as exc:
        raise InvalidInput(str(exc)) from exc
    if predictor.traits.needs_weights and not spec.weights_digest:
        raise InvalidInput(f"model {spec.name} v{spec.number} has no weights")
    prepared = _prepared(predictor, spec, blobs)
    raw = predictor.predict(prepared, spec, volume, affine, Hooks(progress, should_stop, timings))
    return predictors.check_probabilities(predictor.postprocess(raw, spec), spec, volume.shape)
