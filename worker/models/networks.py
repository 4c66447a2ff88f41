"""MONAI segmentation networks: one output channel per structure, sigmoid (multi-label) outputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets import SegResNet, UNet

__all__ = ["ARCHITECTURES", "build_network", "count_parameters"]

ARCHITECTURES: tuple[str, ...] = ("unet", "segresnet")


def build_network(architecture: str, config: Mapping[str, Any], out_channels: int) -> torch.nn.Module:
    """Build a 3-D single-input-channel network with ``out_channels`` logit channels (apply sigmoid, not softmax).

    ``config`` keys (all optional):

    - unet: ``channels`` (default (8, 16, 32, 64)), ``strides`` (default 2 per down step),
      ``num_res_units`` (1), ``norm`` ("batch" or "instance", default "instance"), ``dropout`` (0.0).
    - segresnet: ``init_filters`` (8), ``blocks_down`` ((1, 2, 2, 4)), ``blocks_up`` ((1, 1, 1)),
      ``norm`` ("batch", "instance" or "group", default "group" with 8 groups), ``dropout`` (None).
    """
    if out_channels < 1:
        raise ValueError(f"out_channels must be >= 1, got {out_channels}")
    arch = architecture.lower()
    if arch == "unet":
        channels = tuple(int(c) for c in config.get("channels", (8, 16, 32, 64)))
        if len(channels) < 2:
            raise ValueError("unet 'channels' needs at least two entries")
        strides = tuple(int(s) for s in config.get("strides", (2,) * (len(channels) - 1)))
        unet_norm = str(config.get("norm", "instance")).lower()
        if unet_norm not in ("batch", "instance"):
            raise ValueError(f"unet 'norm' must be 'batch' or 'instance', got {unet_norm!r}")
        return UNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=out_channels,
            channels=channels,
            strides=strides,
            num_res_units=int(config.get("num_res_units", 1)),
            norm=unet_norm,
            dropout=float(config.get("dropout", 0.0)),
        )
    if arch == "segresnet":
        init_filters = int(config.get("init_filters", 8))
        norm_name = str(config.get("norm", "group")).lower()
        norm: tuple[str, dict[str, Any]] | str
        if norm_name == "group":
            norm = ("GROUP", {"num_groups": min(8, init_filters)})
        elif norm_name in ("batch", "instance"):
            norm = norm_name
        else:
            raise ValueError(f"segresnet 'norm' must be 'group', 'batch' or 'instance', got {norm_name!r}")
        dropout = config.get("dropout")
        return SegResNet(
            spatial_dims=3,
            init_filters=init_filters,
            in_channels=1,
            out_channels=out_channels,
            blocks_down=tuple(int(b) for b in config.get("blocks_down", (1, 2, 2, 4))),
            blocks_up=tuple(int(b) for b in config.get("blocks_up", (1, 1, 1))),
            norm=norm,
            dropout_prob=None if dropout is None else float(dropout),
        )
    raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")


def count_parameters(network: torch.nn.Module) -> int:
    """Number of trainable parameters of a network."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad)
