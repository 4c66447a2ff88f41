"""Start the click-guided network from the bundled phantom UNet (``worker/models/weights/phantom_unet.pt``).

That UNet already segments the phantoms' organs from the image alone; its weights seed every layer of the same
shape, its first layer's image filters seed the image channel (the click and previous-mask channels start at
zero, so the seeded network first answers as the UNet would), and the layers that differ in shape (the output,
13 structures → 1 mask) start fresh. Training then teaches the network to follow the clicks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

__all__ = ["PHANTOM_UNET", "seed_from_unet"]

PHANTOM_UNET = Path(__file__).resolve().parents[1] / "weights" / "phantom_unet.pt"


def seed_from_unet(network: torch.nn.Module, path: Path = PHANTOM_UNET) -> dict[str, object]:
    """Copy matching weights of a saved single-input UNet into ``network``; returns what was copied."""
    data = path.read_bytes()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = network.state_dict()
    copied, widened, fresh = [], [], []
    for name, value in target.items():
        old = source.get(name.removeprefix("unet."))
        if old is None:
            fresh.append(name)
        elif old.shape == value.shape:
            target[name] = old.clone()
            copied.append(name)
        elif old.dim() == value.dim() == 5 and old.shape[0] == value.shape[0] and old.shape[1] < value.shape[1]:
            grown = torch.zeros_like(value)
            grown[:, : old.shape[1]] = old  # image filters kept; guidance channels start at zero
            target[name] = grown
            widened.append(name)
        else:
            fresh.append(name)
    network.load_state_dict(target)
    return {
        "path": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "copied": len(copied),
        "widened": widened,
        "fresh": fresh,
    }
