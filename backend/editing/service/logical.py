"""Logical operations between the target and another structure, on a common region."""

from __future__ import annotations

import numpy as np


def combine(op: str, target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """copy: the source; add: union; subtract: target minus source; intersect: both."""
    if op == "copy":
        return source.copy(order="K")
    if op == "add":
        return target | source
    if op == "subtract":
        return target & ~source
    if op == "intersect":
        return target & source
    raise ValueError(f"unknown logical operation {op!r}")


def invert(target: np.ndarray, within: np.ndarray | None = None) -> np.ndarray:
    """The target's complement, inside `within` only when given (outside it the target is unchanged)."""
    if within is None:
        return ~target
    return np.where(within, ~target, target)
