"""A small, deterministic training loop for the multi-label (sigmoid) segmentation networks."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.losses import DiceCELoss

from worker.models.inference import InferenceConfig, predict_probabilities, probabilities_to_masks, select_device
from worker.models.preprocessing import Preprocessing, labels_to_model_space, to_model_space

__all__ = [
    "TrainingCancelled",
    "TrainingConfig",
    "TrainingResult",
    "TrainingSample",
    "dice_per_channel",
    "load_weights",
    "save_weights",
    "train",
]


class TrainingCancelled(Exception):
    """Raised inside ``train`` when the ``should_stop`` callback asks to stop (the weights are then partial)."""


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters; ``pos_fraction`` of the crops are centred on a foreground voxel of a random structure.

    The learning rate follows a cosine from ``learning_rate`` down to 5 % of it; with ``warmup_fraction`` > 0 it
    first rises linearly over that share of the steps (fine-tuning: a fresh Adam's first steps are about
    ``learning_rate`` per weight whatever the gradient, which shakes a trained network before its moments settle).
    """

    epochs: int = 30
    learning_rate: float = 2e-3
    patch_size: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = 2
    seed: int = 0
    samples_per_volume: int = 4
    pos_fraction: float = 0.75
    weight_decay: float = 1e-5
    device: str | None = None
    warmup_fraction: float = 0.0

    def __post_init__(self) -> None:
        """Validate the fields."""
        if self.epochs < 1 or self.batch_size < 1 or self.samples_per_volume < 1:
            raise ValueError("epochs, batch_size and samples_per_volume must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be positive")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive ints, got {self.patch_size!r}")
        if not 0.0 <= self.pos_fraction <= 1.0:
            raise ValueError("pos_fraction must be within [0, 1]")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError("warmup_fraction must be within [0, 1)")


@dataclass
class TrainingSample:
    """One training case: HU volume (X, Y, Z), its affine and boolean masks (C, X, Y, Z) in scan space."""

    volume: np.ndarray
    affine: np.ndarray
    masks: np.ndarray


@dataclass
class TrainingResult:
    """Validation Dice per output channel (scan space, PanTS empty policy), their mean, and the epoch losses."""

    val_dice: dict[int, float]
    mean_val_dice: float
    epochs_run: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def dice_per_channel(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    """Dice per channel of boolean (C, ...) arrays; 1.0 when both are empty, 0.0 when exactly one is."""
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: {p.shape} vs {t.shape}")
    out: list[float] = []
    for c in range(p.shape[0]):
        ps = int(np.count_nonzero(p[c]))
        ts = int(np.count_nonzero(t[c]))
        if ps == 0 and ts == 0:
            out.append(1.0)
        elif ps == 0 or ts == 0:
            out.append(0.0)
        else:
            out.append(2.0 * int(np.count_nonzero(p[c] & t[c])) / (ps + ts))
    return out


def save_weights(network: torch.nn.Module) -> bytes:
    """Serialise a network's ``state_dict`` (CPU tensors) with ``torch.save``."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, buf)
    return buf.getvalue()


def load_weights(network: torch.nn.Module, data: bytes) -> None:
    """Load ``save_weights`` bytes into a network of the same architecture (``weights_only=True``, strict)."""
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    network.load_state_dict(state, strict=True)


@dataclass
class _Prepared:
    """One sample in model space, padded to at least the patch size, with per-channel foreground indices."""

    image: torch.Tensor
    labels: torch.Tensor
    foreground: list[np.ndarray]


def _prepare(sample: TrainingSample, prep: Preprocessing, patch: tuple[int, int, int]) -> _Prepared:
    """Resample a sample into model space (image bilinear, labels nearest) and pad it to the patch size."""
    if sample.masks.ndim != 4 or sample.masks.shape[1:] != sample.volume.shape:
        raise ValueError(f"masks must be (C, *{sample.volume.shape}), got {sample.masks.shape}")
    image, info = to_model_space(sample.volume, sample.affine, prep)
    labels = labels_to_model_space(sample.masks, sample.affine, prep)
    if tuple(labels.shape[1:]) != info.model_shape:  # pragma: no cover - same affine and transforms
        raise RuntimeError("image and labels landed on different model grids")
    pad: list[int] = []
    for size, p in zip(reversed(info.model_shape), reversed(patch), strict=True):
        diff = max(p - size, 0)
        pad += [diff // 2, diff - diff // 2]
    if any(pad):
        image = torch.nn.functional.pad(image, pad, value=0.0)
        labels = torch.nn.functional.pad(labels, pad, value=0.0)
    fg = [np.flatnonzero(labels[c].numpy() > 0.5) for c in range(labels.shape[0])]
    return _Prepared(image=image, labels=labels, foreground=fg)


def _crop(
    item: _Prepared, patch: tuple[int, int, int], rng: np.random.Generator, pos_fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random patch (image, labels): centred on a foreground voxel of a random non-empty channel, or anywhere."""
    shape = item.image.shape[1:]
    channels = [c for c, idx in enumerate(item.foreground) if idx.size]
    if channels and rng.random() < pos_fraction:
        c = channels[int(rng.integers(len(channels)))]
        flat = int(item.foreground[c][int(rng.integers(item.foreground[c].size))])
        centre = np.unravel_index(flat, shape)
        start = [min(max(int(ctr) - p // 2, 0), s - p) for ctr, p, s in zip(centre, patch, shape, strict=True)]
    else:
        start = [int(rng.integers(0, s - p + 1)) for p, s in zip(patch, shape, strict=True)]
    sl = (slice(None), *(slice(a, a + p) for a, p in zip(start, patch, strict=True)))
    return item.image[sl], item.labels[sl]


def _schedule(optimiser: torch.optim.Optimizer, steps: int, warmup: float) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing to 5 % of the learning rate over ``steps``, after a linear warm-up over its first share."""
    first = round(warmup * steps)
    if first == 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimiser, T_max=steps, eta_min=optimiser.defaults["lr"] * 0.05
        )

    def factor(step: int) -> float:
        if step < first:
            return (step + 1) / first
        progress = min(1.0, (step - first) / max(1, steps - first))
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def train(
    network: torch.nn.Module,
    train: Sequence[TrainingSample],
    val: Sequence[TrainingSample],
    prep: Preprocessing,
    cfg: TrainingConfig,
    progress: Callable[[int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainingResult:
    """Train in place with DiceCE (sigmoid) + Adam on random patches; validate on full volumes in scan space.

    ``progress(epoch, mean_loss)`` is called after each epoch (epoch counts from 1); ``should_stop`` is polled
    before every step and raises ``TrainingCancelled``. Deterministic for a given seed and initial weights on CPU.
    """
    if not train:
        raise ValueError("no training samples")
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = select_device(cfg.device)
    patch = cfg.patch_size
    items = [_prepare(s, prep, patch) for s in train]
    n_out = items[0].labels.shape[0]
    if any(it.labels.shape[0] != n_out for it in items):
        raise ValueError("all samples need the same number of mask channels")

    network.to(device)
    loss_fn = DiceCELoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    optimiser = torch.optim.Adam(network.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(items) * cfg.samples_per_volume / cfg.batch_size)
    scheduler = _schedule(optimiser, cfg.epochs * steps_per_epoch, cfg.warmup_fraction)
    losses: list[float] = []
    for epoch in range(1, cfg.epochs + 1):
        network.train()
        order = [i for i in range(len(items)) for _ in range(cfg.samples_per_volume)]
        rng.shuffle(order)
        total, count = 0.0, 0
        for b0 in range(0, len(order), cfg.batch_size):
            if should_stop is not None and should_stop():
                raise TrainingCancelled(f"training cancelled in epoch {epoch}")
            crops = [_crop(items[i], patch, rng, cfg.pos_fraction) for i in order[b0 : b0 + cfg.batch_size]]
            x = torch.stack([c[0] for c in crops]).to(device)
            y = torch.stack([c[1] for c in crops]).to(device)
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(network(x), y)
            loss.backward()
            optimiser.step()
            scheduler.step()
            total += float(loss.detach().cpu()) * x.shape[0]
            count += int(x.shape[0])
        losses.append(total / max(count, 1))
        if progress is not None:
            progress(epoch, losses[-1])

    val_dice: dict[int, float] = {}
    if val:
        icfg = InferenceConfig(roi_size=patch, overlap=0.25, mode="gaussian", device=cfg.device)
        sums = np.zeros(n_out, dtype=np.float64)
        for s in val:
            if should_stop is not None and should_stop():
                raise TrainingCancelled("training cancelled during validation")
            probs = predict_probabilities(network, s.volume, s.affine, prep, icfg)
            sums += np.asarray(dice_per_channel(probabilities_to_masks(probs), s.masks))
        val_dice = {c: float(sums[c] / len(val)) for c in range(n_out)}
    mean = float(np.mean(list(val_dice.values()))) if val_dice else float("nan")
    return TrainingResult(
        val_dice=val_dice,
        mean_val_dice=mean,
        epochs_run=cfg.epochs,
        losses=losses,
        seconds=time.perf_counter() - started,
    )
