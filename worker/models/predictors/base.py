"""The predictor protocol and the registry of predictors keyed by architecture.

A predictor turns one scan into soft probabilities, one channel per structure, in three steps: ``prepare`` (once
per weights file and worker process: build and load a network), ``predict`` (run on one scan) and
``postprocess`` (turn what ``predict`` returned into float32 (C, X, Y, Z) probabilities in [0, 1] on the scan's
own grid). Pipelines look predictors up by ``Model.architecture``; a new architecture is one module that calls
``register`` once, named in ``MASKLOOP_PREDICTOR_MODULES`` unless it ships in this package.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from backend.core.inference_rules import (
    ArchitectureTraits,
    UnknownArchitecture,
    register_architecture,
    traits_of,
    unregister_architecture,
)

__all__ = [
    "ArchitectureTraits",
    "Hooks",
    "ModelSpec",
    "Predictor",
    "UnknownArchitecture",
    "architectures",
    "check_probabilities",
    "get",
    "load_modules",
    "register",
    "traits_of",
    "unregister",
]

Progress = Callable[[float], None]
Stop = Callable[[], bool]


@dataclass(frozen=True)
class ModelSpec:
    """Plain data of a model version (read from the database before the session closes)."""

    name: str
    number: int
    architecture: str
    config: dict[str, Any]
    structures: tuple[str, ...]
    preprocessing: dict[str, Any]
    inference: dict[str, Any]
    weights_digest: str | None


@dataclass(frozen=True)
class Hooks:
    """What a running prediction reports to and asks of its job; every hook is optional."""

    # Fraction of the work done, monotonic, last call 1.0.
    progress: Progress | None = None
    # Polled between units of work; a predictor stops (raising) once it returns True.
    should_stop: Stop | None = None
    # Receives named durations in seconds (e.g. ``sliding_window_s``) for the job's result.
    timings: dict[str, float] | None = field(default=None)


class Predictor(Protocol):
    """One architecture's inference: prepare once per weights, predict per scan, postprocess to probabilities."""

    @property
    def traits(self) -> ArchitectureTraits:
        """The architecture this predictor serves and its traits (trainable? needs weights?)."""
        ...

    def prepare(self, spec: ModelSpec, weights: bytes | None) -> Any:
        """What ``predict`` needs (a loaded network, a lookup table…); cached per worker process by weights."""
        ...

    def predict(self, prepared: Any, spec: ModelSpec, volume: np.ndarray, affine: np.ndarray, hooks: Hooks) -> Any:
        """Run on one scan (HU volume in its own axis order, its 4x4 affine)."""
        ...

    def postprocess(self, raw: Any, spec: ModelSpec) -> np.ndarray:
        """Float32 (C, X, Y, Z) probabilities in [0, 1] on the scan's grid, C = ``len(spec.structures)``."""
        ...


P = TypeVar("P", bound=Predictor)
_PREDICTORS: dict[str, Predictor] = {}


def register(predictor: P) -> P:
    """Make ``predictor`` the one for its architecture (and add the architecture to the shared catalogue).

    Registering the same class again (a module imported twice) replaces it; another class for a registered
    architecture is refused, so a plugin cannot silently take over a bundled architecture.
    """
    traits = predictor.traits
    existing = _PREDICTORS.get(traits.name)
    if existing is not None and type(existing).__qualname__ != type(predictor).__qualname__:
        raise ValueError(
            f"architecture {traits.name!r} already has the predictor {type(existing).__qualname__}; unregister it first"
        )
    register_architecture(traits)
    _PREDICTORS[traits.name] = predictor
    return predictor


def unregister(architecture: str) -> None:
    """Remove a registered predictor (tests); a bundled architecture stays in the catalogue."""
    _PREDICTORS.pop(architecture, None)
    with contextlib.suppress(ValueError):  # built in: the catalogue keeps describing it
        unregister_architecture(architecture)


def get(architecture: str) -> Predictor:
    """The predictor registered for an architecture."""
    predictor = _PREDICTORS.get(architecture)
    if predictor is None:
        raise UnknownArchitecture(
            f"unknown architecture {architecture!r}: this worker has predictors for {list(architectures())}; "
            "name the module that registers it in MASKLOOP_PREDICTOR_MODULES"
        )
    return predictor


def architectures() -> tuple[str, ...]:
    """Architectures with a registered predictor, sorted."""
    return tuple(sorted(_PREDICTORS))


def load_modules(names: str | Iterable[str]) -> list[str]:
    """Import predictor modules (a comma-separated string or names) so they register; returns the names imported."""
    listed = names.split(",") if isinstance(names, str) else list(names)
    imported = []
    for name in (n.strip() for n in listed):
        if name:
            importlib.import_module(name)
            imported.append(name)
    return imported


def check_probabilities(probs: np.ndarray, spec: ModelSpec, scan_shape: tuple[int, ...]) -> np.ndarray:
    """A postprocessed prediction as float32, or ``ValueError`` if its shape breaks the protocol."""
    expected = (len(spec.structures), *scan_shape)
    if tuple(probs.shape) != expected:
        raise ValueError(
            f"the {spec.architecture} predictor returned shape {tuple(probs.shape)}; expected {expected} "
            "(one channel per structure on the scan grid)"
        )
    return np.asarray(probs, dtype=np.float32)
