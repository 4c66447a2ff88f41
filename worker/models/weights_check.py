"""Check a state dict against a network before it is trusted: strict load, then one forward pass on a tiny input.

Pure ML (torch): the pipeline (`worker.pipelines.check_weights`) builds the network of the model's architecture and
hands it here with the uploaded bytes; the answer is None (the weights fit and run) or a reason a lead can act on.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping

import torch

__all__ = ["MAX_REASON", "check_network_weights", "load_state_dict_bytes"]

MAX_REASON = 1500
# Cube sides tried for the forward pass: the first a network's down-sampling accepts is used.
_SIDES = (32, 64)


def _short(text: str, limit: int = MAX_REASON) -> str:
    """One paragraph, cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def load_state_dict_bytes(data: bytes) -> tuple[Mapping[str, torch.Tensor] | None, str | None]:
    """``(state_dict, None)`` from ``torch.save`` bytes (``weights_only=True``: no code runs), or ``(None, reason)``."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, OSError) as exc:
        return None, _short(f"not a torch state_dict file ({type(exc).__name__}: {exc})", 400)
    if not isinstance(state, Mapping) or not state:
        kind = type(state).__name__
        return None, f"the file holds a {kind}, not a state_dict (a mapping of parameter names to tensors)"
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        return None, _short(f"the state_dict has entries that are not named tensors: {bad[:5]}", 400)
    return state, None


def check_network_weights(network: torch.nn.Module, data: bytes, out_channels: int) -> str | None:
    """None when ``data`` loads strictly into ``network`` and one forward pass gives finite logits of
    ``out_channels`` channels; otherwise why not."""
    state, reason = load_state_dict_bytes(data)
    if state is None:
        return reason
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        return _short(f"the state_dict does not fit the network: {exc}")
    network.eval()
    generator = torch.Generator().manual_seed(0)
    last_error = ""
    for side in _SIDES:
        x = torch.randn((1, 1, side, side, side), generator=generator)
        try:
            with torch.no_grad():
                y = network(x)
        except RuntimeError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
            continue
        if not isinstance(y, torch.Tensor):
            return f"the network returned a {type(y).__name__}, not a tensor"
        if y.ndim != 5 or y.shape[0] != 1 or y.shape[1] != out_channels:
            return f"the forward pass gave shape {list(y.shape)}; expected [1, {out_channels}, X, Y, Z]"
        if not bool(torch.isfinite(y).all()):
            return "the forward pass gave NaN or infinite values: the weights hold non-finite numbers"
        return None
    return _short(f"one forward pass on a tiny input failed: {last_error}")
