"""Predictors keyed by architecture: the protocol and registry (``base``) and the bundled architectures.

Importing this package registers the bundled predictors; extra ones register when their module is imported
(``load_modules``, which the worker runs at start on ``MASKLOOP_PREDICTOR_MODULES``).
"""

from worker.models.predictors import classical, interactive, segresnet, unet
from worker.models.predictors.base import (
    ArchitectureTraits,
    Hooks,
    ModelSpec,
    Predictor,
    UnknownArchitecture,
    architectures,
    check_probabilities,
    get,
    load_modules,
    register,
    unregister,
)
from worker.models.predictors.network import NetworkPredictor

__all__ = [
    "ArchitectureTraits",
    "Hooks",
    "ModelSpec",
    "NetworkPredictor",
    "Predictor",
    "UnknownArchitecture",
    "architectures",
    "check_probabilities",
    "classical",
    "get",
    "interactive",
    "load_modules",
    "register",
    "segresnet",
    "unet",
    "unregister",
]
