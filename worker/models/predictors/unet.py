"""MONAI UNet predictor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets import UNet

from worker.models.predictors.base import register, traits_of
from worker.models.predictors.network import NetworkPredictor


class UNetPredictor(NetworkPredictor):
    """MONAI's residual UNet, instance-normalised by default."""

    traits = traits_of("unet")

    def build(self, config: Mapping[str, Any], out_channels: int) -> torch.nn.Module:
        """``config`` keys (all optional): ``channels`` (default (8, 16, 32, 64)), ``strides`` (2 per down step),
        ``num_res_units`` (1), ``norm`` ("batch" or "instance", default "instance"), ``dropout`` (0.0)."""
        channels = tuple(int(c) for c in config.get("channels", (8, 16, 32, 64)))
        if len(channels) < 2:
            raise ValueError("unet 'channels' needs at least two entries")
        strides = tuple(int(s) for s in config.get("strides", (2,) * (len(channels) - 1)))
        norm = str(config.get("norm", "instance")).lower()
        if norm not in ("batch", "instance"):
            raise ValueError(f"unet 'norm' must be 'batch' or 'instance', got {norm!r}")
        return UNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=out_channels,
            channels=channels,
            strides=strides,
            num_res_units=int(config.get("num_res_units", 1)),
            norm=norm,
            dropout=float(config.get("dropout", 0.0)),
        )


register(UNetPredictor())
