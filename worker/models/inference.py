"""Sliding-window MONAI inference in model space, returning sigmoid probabilities on the scan's own grid."""

from __future__ import annotations

import contextlib
import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from scipy.special import xlogy

from backend.core.inference_rules import DEFAULT_INFERENCE, MIN_OVERLAP, inference_problems
from worker.models.preprocessing import Preprocessing, to_model_space, to_scan_space

__all__ = [
    "InferenceCancelled",
    "InferenceConfig",
    "binary_entropy",
    "count_windows",
    "dequantise_unit",
    "effective_roi",
    "predict_probabilities",
    "probabilities_to_masks",
    "quantise_unit",
    "select_device",
]


class InferenceCancelled(Exception):
    """Raised inside inference when the ``should_stop`` callback asks to stop."""


@dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window settings (MONAI conventions: 96^3 windows, overlap >= 0.25, gaussian blending).

    ``roi_multiple``: see ``effective_roi``; the window shrinks to fit a small image instead of zero-padding it.
    """

    roi_size: tuple[int, int, int] = (96, 96, 96)
    overlap: float = 0.25
    mode: str = "gaussian"
    sw_batch_size: int = 1
    device: str | None = None
    amp: bool = True
    roi_multiple: int = 16

    def __post_init__(self) -> None:
        """Validate the fields by the rules the API checks a model's settings with (``inference_rules``)."""
        # numpy integers (a patch size computed from an array shape) are integers here.
        roi = tuple(int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v for v in self.roi_size)
        object.__setattr__(self, "roi_size", roi)
        settings = {"roi_size": roi, "overlap": self.overlap, "mode": self.mode, "sw_batch_size": self.sw_batch_size}
        problems = inference_problems({**settings, "device": self.device, "amp": self.amp})
        if problems:
            raise ValueError(problems[0])
        if self.roi_multiple < 0:
            raise ValueError("roi_multiple must be >= 0")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> InferenceConfig:
        """A model's stored sliding-window settings, defaults filled in; an overlap stored below the floor is raised
        to it (rows older than the API's check), everything else must pass the shared rules."""
        raw = {**DEFAULT_INFERENCE, **settings}
        return cls(
            roi_size=tuple(int(v) for v in raw["roi_size"]),  # type: ignore[arg-type]
            overlap=max(MIN_OVERLAP, float(raw["overlap"])),
            mode=str(raw["mode"]),
            sw_batch_size=int(raw["sw_batch_size"]),
            device=raw.get("device"),
            amp=bool(raw.get("amp", True)),
        )


def select_device(requested: str | None) -> torch.device:
    """The requested torch device; ``None`` or an unavailable CUDA device falls back (cuda if present, else cpu)."""
    if requested is None or requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError as exc:
        raise ValueError(f"unsupported device {requested!r}; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return torch.device("cuda", 0)
        return dev
    if dev.type == "cpu":
        return dev
    raise ValueError(f"unsupported device {requested!r}; use 'cpu', 'cuda' or 'cuda:N'")


def effective_roi(image_shape: Sequence[int], roi_size: Sequence[int], multiple: int) -> tuple[int, int, int]:
    """The window actually used: along an axis where the image is smaller than the window, the largest multiple
    of ``multiple`` that fits (so the network sees no zero padding, which shifts its normalisation statistics);
    unchanged where the image is at least as large, where it is smaller than ``multiple``, or if ``multiple`` is 0.
    """
    out = []
    for s, r in zip(image_shape, roi_size, strict=True):
        s, r = int(s), int(r)
        if multiple > 0 and s < r and s >= multiple:
            r = (s // multiple) * multiple
        out.append(r)
    return (out[0], out[1], out[2])


def count_windows(image_shape: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Number of windows ``sliding_window_inference`` visits for one image (same padding and scan-interval rules)."""
    roi = [int(r) for r in roi_size]
    size = [max(int(s), r) for s, r in zip(image_shape, roi, strict=True)]
    interval = [r if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(size, roi, strict=True)]
    return len(dense_patch_slices(size, roi, interval))


def predict_probabilities(
    network: torch.nn.Module,
    volume: np.ndarray,
    affine: np.ndarray,
    prep: Preprocessing,
    cfg: InferenceConfig,
    progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """Float32 (C, X, Y, Z) sigmoid probabilities on the scan grid; moves ``network`` to the device, eval mode.

    ``progress`` receives the fraction of windows done (monotonic, last call 1.0); ``should_stop`` is polled before
    every window and raises ``InferenceCancelled`` when it returns True. ``timings``, if given, receives
    ``sliding_window_s``: the seconds spent inside MONAI's ``sliding_window_inference`` itself.
    """
    device = select_device(cfg.device)
    if should_stop is not None and should_stop():
        raise InferenceCancelled("inference cancelled before it started")
    image, info = to_model_space(volume, affine, prep)
    roi = effective_roi(info.model_shape, cfg.roi_size, cfg.roi_multiple)
    total = count_windows(info.model_shape, roi, cfg.overlap)
    done = 0

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        nonlocal done
        if should_stop is not None and should_stop():
            raise InferenceCancelled(f"inference cancelled after {done} of {total} windows")
        out = network(batch)
        done += int(batch.shape[0])
        if progress is not None:
            progress(min(done / total, 1.0))
        return out.float()

    network.eval()
    network.to(device)
    use_amp = cfg.amp and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        started = time.perf_counter()
        logits = sliding_window_inference(
            image[None].to(device),
            roi_size=roi,
            sw_batch_size=cfg.sw_batch_size,
            predictor=predictor,
            overlap=cfg.overlap,
            mode=cfg.mode,
            sw_device=device,
            device=device,
        )
        assert isinstance(logits, torch.Tensor)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels run asynchronously: time them, not their launch
        if timings is not None:
            timings["sliding_window_s"] = time.perf_counter() - started
        # In place: the logits are ours alone, and a second C x X x Y x Z float32 array would cost its allocation.
        probs_model = logits[0].float().sigmoid_()
    del logits
    if should_stop is not None and should_stop():
        raise InferenceCancelled("inference cancelled before the inverse resample")
    if info.same_grid:
        # The model grid is the scan grid (already in the target orientation and spacing): nothing to resample.
        return np.asarray(probs_model.cpu().numpy(), dtype=np.float32)
    probs = to_scan_space(probs_model, info)  # on the model's device: the GPU resamples far faster than the CPU
    del probs_model
    np.clip(probs, 0.0, 1.0, out=probs)
    return probs


def probabilities_to_masks(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean masks: probability strictly above ``threshold``."""
    return np.asarray(probs) > threshold


_LN2 = math.log(2.0)


def binary_entropy(probs: np.ndarray) -> np.ndarray:
    """Normalised binary entropy in bits (log base 2), in [0, 1]: H(0) = H(1) = 0, H(0.5) = 1; float32, same shape."""
    p = np.clip(np.asarray(probs, dtype=np.float32), 0.0, 1.0)
    q = np.float32(1.0) - p
    h = xlogy(p, p)
    h += xlogy(q, q)
    h = np.clip(h * np.float32(-1.0 / _LN2), 0.0, 1.0) + np.float32(0.0)  # + 0 turns -0.0 into +0.0
    return np.asarray(h, dtype=np.float32)


def quantise_unit(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) -> uint8 via round(x * 255); the round trip error is at most 1/510."""
    y = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0) * np.float32(255.0)
    return np.rint(y).astype(np.uint8)


def dequantise_unit(u8: np.ndarray) -> np.ndarray:
    """Inverse of ``quantise_unit``: uint8 -> float32 in [0, 1]."""
    return np.asarray(u8, dtype=np.float32) / np.float32(255.0)
