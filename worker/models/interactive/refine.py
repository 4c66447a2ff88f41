"""``refine``: one click request → the structure's mask in a region of the scan (see the package docstring)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from worker.models.interactive.errors import (
    ClicksOutOfVolume,
    InvalidRequest,
    TooManyClicks,
    UnknownStructure,
)
from worker.models.interactive.geometry import Region, choose_region, from_canonical, spacing_of, to_canonical
from worker.models.interactive.guidance import build_input, resample, window
from worker.models.interactive.merge import progressive_merge
from worker.models.interactive.model import InteractiveConfig, LoadedInteractiveModel

__all__ = [
    "InteractiveAnswer",
    "InteractiveRequest",
    "PreparedRequest",
    "keep_clicked",
    "prepare_request",
    "refine",
    "region_for",
]

Index = tuple[int, int, int]


@dataclass(frozen=True)
class InteractiveRequest:
    """One click request: the scan (HU, storage order), its geometry, the structure, clicks and the current mask.

    ``previous`` is the structure's current mask: the full volume, or a box placed at ``previous_origin``.
    """

    image: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    structure: str
    positive: Sequence[Sequence[int]]
    negative: Sequence[Sequence[int]] = ()
    previous: np.ndarray | None = None
    previous_origin: Index = (0, 0, 0)


@dataclass(frozen=True)
class InteractiveAnswer:
    """The structure's new mask inside a region: voxels ``origin … origin + mask.shape`` replace the old ones."""

    origin: Index
    mask: np.ndarray
    structure: str
    timings: dict[str, float] = field(default_factory=dict)


def _clicks(points: Sequence[Sequence[int]], shape: Sequence[int], kind: str) -> list[Index]:
    """Validated storage-order voxel indices (integers, inside the volume)."""
    out: list[Index] = []
    for p in points:
        try:
            values = [float(v) for v in p]
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"a {kind} click must be three voxel indices, got {p!r}") from exc
        if len(values) != 3 or not all(np.isfinite(values)):
            raise InvalidRequest(f"a {kind} click must be three finite voxel indices, got {p!r}")
        if not all(-0.5 <= v < n - 0.5 for v, n in zip(values, shape, strict=True)):
            raise ClicksOutOfVolume(f"the {kind} click {tuple(p)} lies outside the volume of shape {tuple(shape)}")
        out.append((round(values[0]), round(values[1]), round(values[2])))
    return out


def _previous_box(req: InteractiveRequest) -> tuple[tuple[Index, Index], np.ndarray, Index] | None:
    """The previous mask's bounding box in volume indices, the mask and its origin; None when empty."""
    prev = req.previous
    if prev is None:
        return None
    prev = np.asarray(prev)
    origin = tuple(int(v) for v in req.previous_origin)
    if prev.ndim != 3 or len(origin) != 3:
        raise InvalidRequest("previous must be a 3-D mask and previous_origin three indices")
    if any(o < 0 or o + n > s for o, n, s in zip(origin, prev.shape, req.image.shape, strict=True)):
        raise InvalidRequest(f"previous (shape {prev.shape} at {origin}) does not fit the volume {req.image.shape}")
    found = ndimage.find_objects(prev.astype(bool).view(np.uint8))
    if not found or found[0] is None:
        return None
    s = found[0]
    lo = (origin[0] + s[0].start, origin[1] + s[1].start, origin[2] + s[2].start)
    hi = (origin[0] + s[0].stop, origin[1] + s[1].stop, origin[2] + s[2].stop)
    return (lo, hi), prev, (origin[0], origin[1], origin[2])


def _check(model: LoadedInteractiveModel, req: InteractiveRequest) -> tuple[list[Index], list[Index]]:
    if req.structure not in model.structures:
        raise UnknownStructure(
            f"the interactive model does not know {req.structure!r}; it knows {', '.join(model.structures)}"
        )
    image = req.image
    if not isinstance(image, np.ndarray) or image.ndim != 3 or min(image.shape) < 1:
        raise InvalidRequest("image must be a non-empty 3-D array (storage order)")
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise InvalidRequest(f"image must hold real numbers (HU), got {image.dtype}")
    actual = spacing_of(req.affine)
    given = tuple(float(v) for v in req.spacing)
    if len(given) != 3 or not np.allclose(given, actual, rtol=0.01):
        raise InvalidRequest(
            f"spacing {given} disagrees with the affine's voxel size {tuple(round(v, 4) for v in actual)}"
        )
    n = len(req.positive) + len(req.negative)
    if n > model.config.max_clicks:
        raise TooManyClicks(f"{n} clicks in one request; the model takes at most {model.config.max_clicks}")
    return _clicks(req.positive, image.shape, "positive"), _clicks(req.negative, image.shape, "negative")


def region_for(
    config: InteractiveConfig,
    shape: Sequence[int],
    affine: np.ndarray,
    clicks: Sequence[Index],
    box: tuple[Index, Index] | None,
) -> Region:
    """The region a request with these clicks and previous-mask box is answered in."""
    return choose_region(
        shape,
        affine,
        clicks,
        box,
        model_spacing=config.spacing_mm,
        margin_mm=config.margin_mm,
        min_extent_mm=config.min_extent_mm,
        max_size=config.max_size,
        divisor=config.divisor,
    )


def keep_clicked(mask: np.ndarray, positive: Sequence[Index], previous: np.ndarray | None) -> np.ndarray:
    """The connected components holding a positive click (else those overlapping the previous mask)."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    keep = {int(labels[p]) for p in positive} - {0}
    if not keep and previous is not None:
        keep = set(np.unique(labels[previous > 0.5]).tolist()) - {0}
    if not keep:
        return mask
    return np.isin(labels, sorted(keep))


@dataclass(frozen=True)
class PreparedRequest:
    """A validated request on the model grid: its region, the network input and the clicks it holds."""

    region: Region
    input: torch.Tensor  # (C, *region.padded_shape)
    positive: list[Index]  # model-grid voxels (RAS order)
    negative: list[Index]
    previous: np.ndarray | None  # model grid, [0, 1]
    previous_region: np.ndarray | None = None  # the previous mask in the region (storage order, bool)
    clicks_region: tuple[list[Index], list[Index]] = ([], [])  # positive, negative clicks in the region (storage)


def prepare_request(model: LoadedInteractiveModel, req: InteractiveRequest) -> PreparedRequest:
    """Validate a request and build the network input of its region (the first half of ``refine``)."""
    cfg = model.config
    positive, negative = _check(model, req)
    prev = _previous_box(req)
    if not positive and prev is None:
        raise InvalidRequest("give at least one positive click, or the current mask with negative clicks")
    region = region_for(cfg, req.image.shape, req.affine, positive + negative, prev[0] if prev else None)
    crop = to_canonical(np.asarray(req.image[region.slices()], dtype=np.float32), region.ornt)
    image01 = window(resample(crop, region.model_shape), cfg.hu_window).numpy()
    prev_model = None
    prev_region = None
    if prev is not None:
        prev_region = _previous_in(region, prev[1], prev[2])
        if cfg.use_previous:
            prev_model = resample(to_canonical(prev_region.astype(np.float32), region.ornt), region.model_shape).numpy()
    pos_model = [region.to_model(p) for p in positive if region.contains(p)]
    neg_model = [region.to_model(p) for p in negative if region.contains(p)]
    x = build_input(image01, pos_model, neg_model, prev_model, region.padded_shape, cfg)

    def rel(points: list[Index]) -> list[Index]:
        return [(p[0] - region.lo[0], p[1] - region.lo[1], p[2] - region.lo[2]) for p in points if region.contains(p)]

    return PreparedRequest(
        region=region,
        input=x,
        positive=pos_model,
        negative=neg_model,
        previous=prev_model,
        previous_region=prev_region,
        clicks_region=(rel(positive), rel(negative)),
    )


def _previous_in(region: Region, pmask: np.ndarray, origin: Index) -> np.ndarray:
    """The previous mask (a box at ``origin``) cropped to the region, storage order, bool."""
    full = np.zeros(region.shape, dtype=bool)
    dst = [
        slice(max(lo, o), min(hi, o + n))
        for lo, hi, o, n in zip(region.lo, region.hi, origin, pmask.shape, strict=True)
    ]
    if all(d.start < d.stop for d in dst):
        src = tuple(slice(d.start - o, d.stop - o) for d, o in zip(dst, origin, strict=True))
        rel = tuple(slice(d.start - lo, d.stop - lo) for d, lo in zip(dst, region.lo, strict=True))
        full[rel] = pmask[src] > 0.5
    return full


def refine(model: LoadedInteractiveModel, req: InteractiveRequest) -> InteractiveAnswer:
    """The structure's mask in the region around the clicks and the previous mask (pure; the model stays warm)."""
    started = time.perf_counter()
    cfg = model.config
    prepared = prepare_request(model, req)
    region = prepared.region
    timings = {"prepare_s": time.perf_counter() - started}

    t = time.perf_counter()
    with model.lock, torch.inference_mode():
        logits = model.network(prepared.input[None])[0, 0]
    timings["network_s"] = time.perf_counter() - t

    t = time.perf_counter()
    m = region.model_shape
    prob = torch.sigmoid(logits[: m[0], : m[1], : m[2]].float())
    if cfg.keep_clicked_components:
        hard = (prob > cfg.threshold).numpy()
        kept = keep_clicked(hard, prepared.positive, prepared.previous)
        if kept is not hard:
            prob = prob * torch.from_numpy(kept.astype(np.float32))
    mask = from_canonical((resample(prob, region.canonical_shape) > cfg.threshold).numpy(), region.ornt)
    if cfg.progressive_merge and prepared.previous_region is not None and prepared.previous_region.any():
        mask = progressive_merge(mask, prepared.previous_region, *prepared.clicks_region, opening=cfg.merge_opening)
    timings["restore_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    return InteractiveAnswer(origin=region.lo, mask=mask, structure=req.structure, timings=timings)
