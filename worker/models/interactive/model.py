"""The click-guided network, its settings and its files: ``<name>.pt`` (a ``state_dict``) + ``<name>.json``.

The sidecar is the model's registration: ``{"architecture": "interactive", "config": InteractiveConfig,
"structures": [...], "validation": {clicks-to-Dice metrics}, "training": {...}, "weights_sha256": ...}``, the
same shape as the bundled phantom UNet's, so the registry can take ``config``/``structures`` as the model's and
``validation`` as the version's metrics.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import UNet

from worker.models.interactive.errors import WeightsMissing
from worker.models.training import load_weights, save_weights

__all__ = [
    "ARCHITECTURE",
    "ClickNet",
    "InteractiveConfig",
    "LoadedInteractiveModel",
    "build_network",
    "load_interactive_model",
    "load_interactive_model_bytes",
    "write_model_files",
]

ARCHITECTURE = "interactive"


@dataclass(frozen=True)
class InteractiveConfig:
    """Network shape and the region/guidance settings that training and inference must share."""

    channels: tuple[int, ...] = (8, 16, 32, 64, 128)  # the first levels seeded by the phantom UNet
    num_res_units: int = 1
    head_channels: int = 8
    norm: str = "instance"
    spacing_mm: float = 3.0  # isotropic model grid
    hu_window: tuple[float, float] = (-175.0, 250.0)
    sigma: float = 2.0  # click Gaussian, model voxels (DeepGrow's AddGuidanceSignald)
    margin_mm: float = 40.0  # around the clicks and the previous mask
    # A first click sees at least this much per axis: the training patch (64 voxels of 3 mm), since the instance
    # norms' statistics, and so the answers, shift on regions much larger than those trained on.
    min_extent_mm: float = 192.0
    max_size: int = 128  # model voxels per axis at most (128 × 3 mm = 384 mm)
    threshold: float = 0.5
    max_clicks: int = 64  # positive + negative in one request
    use_previous: bool = True
    keep_clicked_components: bool = True
    # FocalClick's progressive merge (``merge``): a correction changes only the regions that honour a click.
    progressive_merge: bool = True
    merge_opening: int = 0  # scan voxels: the change is opened by this much before its clicked parts are taken
    # Geodesic click maps (``geodesic``): step cost sqrt(spatial² + gamma² ΔI²) on the image smoothed by `smooth`
    # voxels; channel exp(-d / tau).
    geodesic: bool = True
    geodesic_gamma: float = 100.0
    geodesic_spatial: float = 0.5
    geodesic_smooth: float = 1.5
    geodesic_tau: float = 20.0

    @property
    def divisor(self) -> int:
        """Model-grid sizes are padded to a multiple of this (the network's total downsampling)."""
        return int(2 ** (len(self.channels) - 1))

    @property
    def in_channels(self) -> int:
        """Input channels: image, positive and negative click maps (, previous mask) (, two geodesic maps)."""
        return 3 + int(self.use_previous) + 2 * int(self.geodesic)

    def to_json(self) -> dict[str, Any]:
        """JSON form (lists for tuples)."""
        out = asdict(self)
        out["channels"] = list(self.channels)
        out["hu_window"] = list(self.hu_window)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InteractiveConfig:
        """Inverse of ``to_json``; unknown keys (e.g. the registry's ``promotion``) are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        if "channels" in values:
            values["channels"] = tuple(int(c) for c in values["channels"])
        if "hu_window" in values:
            lo, hi = (float(v) for v in values["hu_window"])
            values["hu_window"] = (lo, hi)
        return cls(**values)


class ClickNet(torch.nn.Module):
    """MONAI's residual UNet with ``head_channels`` outputs, then a 1×1×1 convolution to one logit.

    The head matters: with one output channel MONAI's UNet normalises that single channel (instance norm) just
    before its last convolution, so the logits cannot drift to "mostly background" faster than Adam moves one
    bias; the head's bias starts at the log-odds of a 5 % foreground (the RetinaNet prior) instead.
    """

    def __init__(self, config: InteractiveConfig) -> None:
        """Build the UNet and the head from the config."""
        super().__init__()
        self.unet = UNet(
            spatial_dims=3,
            in_channels=config.in_channels,
            out_channels=config.head_channels,
            channels=config.channels,
            strides=(2,) * (len(config.channels) - 1),
            num_res_units=config.num_res_units,
            norm=config.norm,
        )
        self.head = torch.nn.Conv3d(config.head_channels, 1, kernel_size=1)
        assert self.head.bias is not None
        torch.nn.init.constant_(self.head.bias, -math.log((1 - 0.05) / 0.05))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) → (B, 1, X, Y, Z) logits."""
        return torch.as_tensor(self.head(self.unet(x)))


def build_network(config: InteractiveConfig) -> torch.nn.Module:
    """The click-guided network: ``config.in_channels`` in, one logit out (``ClickNet``)."""
    return ClickNet(config)


@dataclass
class LoadedInteractiveModel:
    """A warm network in eval mode with what it knows; safe to share between threads (calls are serialised)."""

    network: torch.nn.Module
    config: InteractiveConfig
    structures: tuple[str, ...]
    weights_sha256: str
    metrics: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def _threads(threads: int | None) -> None:
    """Set torch's intra-op threads: the given number, else MASKLOOP_TORCH_THREADS, else min(4, CPUs)."""
    if threads is None:
        env = os.environ.get("MASKLOOP_TORCH_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else min(4, os.cpu_count() or 1)
    torch.set_num_threads(max(1, int(threads)))


def load_interactive_model_bytes(
    weights: bytes | None,
    config: Mapping[str, Any],
    structures: Sequence[str],
    *,
    metrics: Mapping[str, Any] | None = None,
    threads: int | None = None,
    warm: bool = True,
) -> LoadedInteractiveModel:
    """A model from registry data (weights blob, ``Model.config``, ``Model.structures``), warmed up by default."""
    if not weights:
        raise WeightsMissing("this interactive model version has no weights; train or upload them first")
    if not structures:
        raise WeightsMissing("an interactive model must list the structures it knows")
    cfg = InteractiveConfig.from_json(config)
    network = build_network(cfg)
    try:
        load_weights(network, weights)
    except Exception as exc:  # a corrupt file or another architecture's weights
        raise WeightsMissing(f"the weights are not this interactive model's: {exc}") from exc
    network.eval()
    _threads(threads)
    model = LoadedInteractiveModel(
        network=network,
        config=cfg,
        structures=tuple(str(s) for s in structures),
        weights_sha256=hashlib.sha256(weights).hexdigest(),
        metrics=dict(metrics or {}),
    )
    if warm:
        with torch.inference_mode():
            size = 4 * cfg.divisor
            network(torch.zeros((1, cfg.in_channels, size, size, size)))
    return model


def load_interactive_model(
    path: str | Path, *, threads: int | None = None, warm: bool = True
) -> LoadedInteractiveModel:
    """Load ``path`` (a ``.pt``) and its ``.json`` sidecar; ``WeightsMissing`` names the command that makes them."""
    weights_path = Path(path)
    sidecar = weights_path.with_suffix(".json")
    if not weights_path.is_file() or not sidecar.is_file():
        raise WeightsMissing(
            f"no interactive model at {weights_path} (weights and its .json sidecar); "
            "make them with `maskloop train --interactive --phantom`"
        )
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    if meta.get("architecture") != ARCHITECTURE:
        raise WeightsMissing(f"{sidecar} describes a {meta.get('architecture')!r} model, not an interactive one")
    return load_interactive_model_bytes(
        weights_path.read_bytes(),
        meta.get("config", {}),
        meta.get("structures", []),
        metrics=meta.get("validation", {}),
        threads=threads,
        warm=warm,
    )


def write_model_files(
    path: Path,
    network: torch.nn.Module,
    config: InteractiveConfig,
    structures: Sequence[str],
    extra: Mapping[str, Any],
) -> str:
    """Write the weights and the sidecar (``extra`` adds keys such as training and validation); returns the sha256."""
    data = save_weights(network)
    digest = hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    meta = {
        "architecture": ARCHITECTURE,
        "config": config.to_json(),
        "structures": list(structures),
        **extra,
        "parameters": sum(p.numel() for p in network.parameters()),
        "weights_sha256": digest,
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return digest
