"""Rules the API and the worker share about models: the architecture catalogue and the sliding-window settings.

Dependency-free on purpose (standard library only): the API process (no torch) checks a model's registration
with these rules, and the worker's ``InferenceConfig`` and predictor registry apply the same ones, so a setting
the API accepts is one the worker runs and an architecture is described in one place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_INFERENCE",
    "INFERENCE_KEYS",
    "MIN_OVERLAP",
    "MODES",
    "ArchitectureTraits",
    "InferenceSettingsError",
    "UnknownArchitecture",
    "architecture_names",
    "check_inference",
    "inference_problems",
    "register_architecture",
    "traits_of",
    "unregister_architecture",
]


# --- architecture catalogue ---


class UnknownArchitecture(ValueError):
    """An architecture name that no predictor describes."""


@dataclass(frozen=True)
class ArchitectureTraits:
    """What the platform needs to know about an architecture without running it."""

    name: str
    # A training job can fine-tune it (and the 'auto' promotion policy may retrain it).
    trainable: bool
    # A version must carry a weights file (a weightless pre-annotator needs none).
    needs_weights: bool
    summary: str = ""
    # Pre-annotation jobs may run it (a click-guided model needs clicks: it only answers click requests).
    preannotates: bool = True


_BUILT_IN = (
    ArchitectureTraits("unet", trainable=True, needs_weights=True, summary="MONAI UNet, one sigmoid per structure"),
    ArchitectureTraits(
        "segresnet", trainable=True, needs_weights=True, summary="MONAI SegResNet, one sigmoid per structure"
    ),
    ArchitectureTraits(
        "classical",
        trainable=False,
        needs_weights=False,
        summary="weightless HU thresholds + connected components + position priors",
    ),
    # Click-guided refinement (worker.models.interactive): answers clicks, not pre-annotation jobs; its weights
    # come from `maskloop train --interactive --phantom`, and a training job fine-tunes it on approved versions.
    ArchitectureTraits(
        "interactive",
        trainable=True,
        preannotates=False,
        needs_weights=True,
        summary="click-guided binary UNet (image + positive/negative clicks + previous mask), DeepGrow/DeepEdit",
    ),
)
_CATALOGUE: dict[str, ArchitectureTraits] = {traits.name: traits for traits in _BUILT_IN}
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")  # fits models.architecture (String(32))


def register_architecture(traits: ArchitectureTraits) -> ArchitectureTraits:
    """Add an architecture to this process's catalogue (idempotent; a different description of a name is refused)."""
    if not _NAME.match(traits.name):
        raise ValueError(f"architecture name {traits.name!r} must be 1-32 lower-case letters, digits, '-' or '_'")
    known = _CATALOGUE.get(traits.name)
    if known is not None and known != traits:
        raise ValueError(f"architecture {traits.name!r} is already registered as {known}")
    _CATALOGUE[traits.name] = traits
    return traits


def unregister_architecture(name: str) -> None:
    """Forget an architecture registered in this process (tests); the built-in ones stay."""
    if any(traits.name == name for traits in _BUILT_IN):
        raise ValueError(f"the built-in architecture {name!r} cannot be unregistered")
    _CATALOGUE.pop(name, None)


def architecture_names(extra: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[str, ...]:
    """Every known architecture name, sorted (``extra``: declared by configuration, see ``traits_of``)."""
    return tuple(sorted({*_CATALOGUE, *(extra or {})}))


def traits_of(name: str, extra: Mapping[str, Mapping[str, Any]] | None = None) -> ArchitectureTraits:
    """The traits of an architecture: the catalogue's, else a configured ``{"name": {"trainable": …,
    "needs_weights": …}}`` declaration (an API process that never imports the worker's predictor modules)."""
    known = _CATALOGUE.get(name)
    if known is not None:
        return known
    declared = (extra or {}).get(name)
    if declared is None:
        raise UnknownArchitecture(f"unknown architecture {name!r}; use one of {list(architecture_names(extra))}")
    flags = {key: declared.get(key) for key in ("trainable", "needs_weights")}
    if not all(isinstance(value, bool) for value in flags.values()):
        raise ValueError(f"architecture {name!r} must declare trainable and needs_weights as true or false")
    return ArchitectureTraits(name, trainable=bool(flags["trainable"]), needs_weights=bool(flags["needs_weights"]))


# --- sliding-window inference settings ---


class InferenceSettingsError(ValueError):
    """Sliding-window settings that break a rule below."""


INFERENCE_KEYS = ("roi_size", "overlap", "mode", "sw_batch_size", "device", "amp")
# MONAI's conventions: 96³ windows, gaussian blending; below 25 % overlap the window seams show in the masks.
DEFAULT_INFERENCE: dict[str, Any] = {"roi_size": [96, 96, 96], "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 1}
MIN_OVERLAP = 0.25
MODES = ("gaussian", "constant")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def inference_problems(settings: Mapping[str, Any]) -> list[str]:
    """What is wrong with a model's sliding-window settings (empty when none); absent keys take their defaults."""
    unknown = sorted(set(settings) - set(INFERENCE_KEYS))
    if unknown:
        return [f"unknown inference settings {unknown}; use {', '.join(INFERENCE_KEYS)}"]
    problems = []
    roi = settings.get("roi_size", DEFAULT_INFERENCE["roi_size"])
    if not isinstance(roi, list | tuple) or len(roi) != 3 or not all(_positive_int(v) for v in roi):
        problems.append(f"roi_size must be three positive integers, got {roi!r}")
    overlap = settings.get("overlap", DEFAULT_INFERENCE["overlap"])
    if isinstance(overlap, bool) or not isinstance(overlap, int | float) or not MIN_OVERLAP <= overlap < 1:
        problems.append(f"sliding-window overlap must be at least {MIN_OVERLAP} and below 1, got {overlap!r}")
    mode = settings.get("mode", DEFAULT_INFERENCE["mode"])
    if mode not in MODES:
        problems.append(f"mode must be 'gaussian' or 'constant', got {mode!r}")
    batch = settings.get("sw_batch_size", DEFAULT_INFERENCE["sw_batch_size"])
    if not _positive_int(batch):
        problems.append(f"sw_batch_size must be a positive integer, got {batch!r}")
    device = settings.get("device")
    if device is not None and not (isinstance(device, str) and _DEVICE.match(device)):
        problems.append(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not isinstance(settings.get("amp", True), bool):
        problems.append("amp must be true or false")
    return problems


def check_inference(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings as a new dict, or ``InferenceSettingsError`` naming the first broken rule."""
    problems = inference_problems(settings)
    if problems:
        raise InferenceSettingsError(problems[0])
    return dict(settings)
