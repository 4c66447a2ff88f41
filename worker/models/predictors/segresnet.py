"""MONAI SegResNet predictor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets import SegResNet

from worker.models.predictors.base import register, traits_of
from worker.models.predictors.network import NetworkPredictor


class SegResNetPredictor(NetworkPredictor):
    """MONAI's SegResNet, group-normalised (8 groups) by default."""

    traits = traits_of("segresnet")

    def build(self, config: Mapping[str, Any], out_channels: int) -> torch.nn.Module:
        """``config`` keys (all optional): ``init_filters`` (8), ``blocks_down`` ((1, 2, 2, 4)), ``blocks_up``
        ((1, 1, 1)), ``norm`` ("batch", "instance" or "group", default "group"), ``dropout`` (None)."""
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


register(SegResNetPredictor())
