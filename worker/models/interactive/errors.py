"""The errors of the interactive model: each a ``ValueError`` (bad input: the caller answers 4xx) but the last."""

from __future__ import annotations

__all__ = [
    "ClicksOutOfVolume",
    "InteractiveError",
    "InvalidRequest",
    "TooManyClicks",
    "UnknownStructure",
    "WeightsMissing",
]


class InteractiveError(ValueError):
    """Base class of every refusal of an interactive request."""


class UnknownStructure(InteractiveError):
    """The request names a structure the loaded model does not know."""


class ClicksOutOfVolume(InteractiveError):
    """A click lies outside the image (voxel indices in storage order)."""


class TooManyClicks(InteractiveError):
    """More clicks in one request than the model's configured ``max_clicks``."""


class InvalidRequest(InteractiveError):
    """Anything else wrong with a request: shapes, spacing, affine, no guidance at all."""


class WeightsMissing(InteractiveError):
    """No weights file, or one that is not an interactive model's (a deployment problem, not the caller's)."""
