"""Training of the click-guided model with a simulated clicker (DeepGrow/DeepEdit-style iterative training).

Each sample: a case and a structure; a first positive click near the structure's centre (the clicker's point or a
random deep interior voxel); a patch of the model grid around it; then 0–3 correction rounds, either with the
network in the loop (predict, click at the centre of the largest error, repeat: the DeepEdit scheme) or from a
synthetic "previous mask" (eroded, dilated, cut, leaking, with a stray blob) with clicks on its largest errors.
The target is the structure's mask in the patch; the loss Dice + cross-entropy on the sigmoid output.
``served_loop`` post-processes the loop's answers as ``refine`` does (clicked components, progressive merge).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from scipy import ndimage

from worker.models.interactive.clicker import centre_of
from worker.models.interactive.guidance import build_input
from worker.models.interactive.merge import progressive_merge
from worker.models.interactive.model import InteractiveConfig, build_network
from worker.models.interactive.phantoms import TRAIN_STRUCTURES, ModelSpaceCase, training_phantom
from worker.models.interactive.refine import keep_clicked
from worker.models.interactive.transfer import PHANTOM_UNET, seed_from_unet
from worker.models.training import load_weights

__all__ = ["TrainConfig", "TrainResult", "make_sample", "train_interactive"]

Index = tuple[int, int, int]
Progress = Callable[[int, int, float], None]
_WEIGHTS = {"liver": 2.0, "pancreatic_lesion": 2.0, "pancreas": 2.0, "aorta": 1.5, "pancreatic_duct": 0.5, "veins": 0.5}


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; ``loop_from`` is the fraction of steps before the network joins the loop."""

    steps: int = 2000
    batch_size: int = 2
    patch: int = 64
    learning_rate: float = 3e-3
    cases: int = 12
    seed: int = 0
    loop_from: float = 0.3
    p_loop: float = 0.45
    p_synthetic: float = 0.25
    max_rounds: int = 3
    seed_from_unet: bool = True  # start from the bundled phantom UNet (see ``transfer``)
    # In the loop, post-process the network's answers as ``refine`` does (clicked components, progressive merge),
    # so the previous masks the network learns from are those the clicker meets when served.
    served_loop: bool = False
    sample_weights: dict[str, float] = field(default_factory=dict)  # per structure, over the built-in ones

    def to_json(self) -> dict[str, object]:
        """JSON form."""
        return asdict(self)


@dataclass(frozen=True)
class TrainResult:
    """Losses (one mean per 50 steps) and timings of a run."""

    losses: list[float]
    seconds: float
    data_seconds: float
    seeded_from: dict[str, object] | None = None


def _interior_point(sub: np.ndarray, rng: np.random.Generator) -> Index:
    """In a structure's tight box: the clicker's centre (half of the time) or a random voxel at least half as
    deep as the deepest one."""
    if rng.random() < 0.5:
        return centre_of(sub)
    edt = ndimage.distance_transform_edt(np.pad(sub, 1))[1:-1, 1:-1, 1:-1]
    cand = np.argwhere(edt >= 0.5 * edt.max())
    p = cand[int(rng.integers(len(cand)))]
    return (int(p[0]), int(p[1]), int(p[2]))


def _extract(case: ModelSpaceCase, name: str, origin: Sequence[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (edge-padded, float32) and truth (zero-padded) patches of ``size``³ at ``origin`` of the case grid."""
    src, dst = [], []
    for a in range(3):
        s0, s1 = max(0, int(origin[a])), min(case.shape[a], int(origin[a]) + size)
        src.append(slice(s0, s1))
        dst.append(slice(s0 - int(origin[a]), s1 - int(origin[a])))
    sub = case.image[tuple(src)].astype(np.float32)
    image = np.pad(sub, [(d.start, size - d.stop) for d in dst], mode="edge")
    truth = np.zeros((size, size, size), dtype=bool)
    (b0, b1, b2), mask = case.boxes[name]
    lo = [max(int(origin[a]), (b0, b1, b2)[a]) for a in range(3)]
    hi = [min(int(origin[a]) + size, (b0, b1, b2)[a] + mask.shape[a]) for a in range(3)]
    if all(lo[a] < hi[a] for a in range(3)):
        truth[tuple(slice(lo[a] - int(origin[a]), hi[a] - int(origin[a])) for a in range(3))] = mask[
            tuple(slice(lo[a] - (b0, b1, b2)[a], hi[a] - (b0, b1, b2)[a]) for a in range(3))
        ]
    return np.ascontiguousarray(image), truth


def _corrupt(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible wrong mask: eroded, dilated, cut by a plane, leaking, or with a stray blob."""
    kind = int(rng.integers(5))
    if not gt.any():
        return gt.copy()
    if kind == 0:
        return ndimage.binary_erosion(gt, iterations=int(rng.integers(1, 4)))
    if kind == 1:
        return ndimage.binary_dilation(gt, iterations=int(rng.integers(1, 4)))
    grid = np.indices(gt.shape, dtype=np.float32)
    anchor = np.argwhere(gt)[int(rng.integers(int(gt.sum())))]
    normal = rng.normal(size=3).astype(np.float32)
    side = np.tensordot(normal, grid - anchor[:, None, None, None].astype(np.float32), axes=1) > 0
    if kind == 2:
        return gt & side
    if kind == 3:
        return gt | (ndimage.binary_dilation(gt, iterations=int(rng.integers(3, 7))) & side)
    centre = anchor + rng.integers(-12, 13, size=3)
    radius = float(rng.uniform(3, 8))
    blob = ((grid - centre[:, None, None, None].astype(np.float32)) ** 2).sum(axis=0) <= radius**2
    return (gt & side) | blob if rng.random() < 0.5 else gt | blob


def _error_clicks(prev: np.ndarray, gt: np.ndarray, k: int) -> list[tuple[Index, bool]]:
    """Clicks at the centres of the ``k`` largest error components of ``prev`` against ``gt``."""
    labels, n = ndimage.label(np.logical_xor(prev, gt), structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    out = []
    for lid in np.argsort(sizes)[::-1][:k]:
        if sizes[lid] == 0:
            break
        p = centre_of(labels == lid)
        out.append((p, bool(gt[p])))
    return out


def _as_served(
    hard: torch.Tensor, pos: list[Index], neg: list[Index], prev: np.ndarray | None, cfg: InteractiveConfig
) -> np.ndarray:
    """A network answer post-processed as ``refine`` does (clicked components, progressive merge), so the
    previous masks of the training loop are those the clicker meets at inference."""
    pred = hard.numpy()
    if cfg.keep_clicked_components:
        pred = keep_clicked(pred, pos, prev)
    if cfg.progressive_merge and prev is not None and prev.any():
        pred = progressive_merge(pred, prev, pos, neg)
    return np.asarray(pred, dtype=bool)


def make_sample(
    case: ModelSpaceCase,
    name: str,
    cfg: InteractiveConfig,
    tcfg: TrainConfig,
    rng: np.random.Generator,
    network: torch.nn.Module | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One (input, target) pair of ``patch``³ for a structure of a case (see the module docstring)."""
    box_origin, sub = case.boxes[name]
    inner = _interior_point(sub, rng)
    first = [box_origin[a] + inner[a] for a in range(3)]
    origin = [int(c + rng.integers(-10, 11)) - tcfg.patch // 2 for c in first]
    image, gt = _extract(case, name, origin, tcfg.patch)
    image = np.clip(image * float(rng.uniform(0.95, 1.05)) + float(rng.uniform(-0.03, 0.03)), 0.0, 1.0)
    pos: list[Index] = [(first[0] - origin[0], first[1] - origin[1], first[2] - origin[2])]
    neg: list[Index] = []
    prev: np.ndarray | None = None
    size = (tcfg.patch,) * 3
    rounds = int(rng.integers(0, tcfg.max_rounds + 1))
    mode = rng.random()
    if rounds and network is not None and mode < tcfg.p_loop:
        with torch.no_grad():
            for _ in range(rounds):
                x = build_input(image, pos, neg, prev, size, cfg)
                hard = network(x[None])[0, 0] > 0
                pred = _as_served(hard, pos, neg, prev, cfg) if tcfg.served_loop else hard.numpy()
                clicks = _error_clicks(pred, gt, 1)
                prev = pred
                if not clicks:
                    break
                (pos if clicks[0][1] else neg).append(clicks[0][0])
    elif rounds and mode < tcfg.p_loop + tcfg.p_synthetic:
        prev = _corrupt(gt, rng)
        for p, positive in _error_clicks(prev, gt, rounds):
            (pos if positive else neg).append(p)
    x = build_input(image, pos, neg, prev, size, cfg)
    return x, torch.from_numpy(gt.astype(np.float32))[None]


def _pick(
    cases: Sequence[ModelSpaceCase],
    rng: np.random.Generator,
    structures: Sequence[str] = TRAIN_STRUCTURES,
    extra: dict[str, float] | None = None,
) -> tuple[ModelSpaceCase, str]:
    case = cases[int(rng.integers(len(cases)))]
    names = [n for n in structures if n in case.boxes]
    table = {**_WEIGHTS, **(extra or {})}
    weights = np.array([table.get(n, 1.0) for n in names])
    return case, names[int(rng.choice(len(names), p=weights / weights.sum()))]


def train_interactive(
    cfg: InteractiveConfig,
    tcfg: TrainConfig,
    progress: Progress | None = None,
    cases: Sequence[ModelSpaceCase] | None = None,
    cache: Path | None = None,
    checkpoint: Callable[[int, torch.nn.Module], None] | None = None,
    *,
    initial: bytes | None = None,
    structures: Sequence[str] = TRAIN_STRUCTURES,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[torch.nn.Module, TrainResult]:
    """Train a network on ``tcfg.cases`` training phantoms (or the given cases) for ``tcfg.steps`` steps.

    ``cache``: a folder keeping the drawn training cases between runs; ``checkpoint`` is called every 100 steps;
    ``initial``: saved weights to fine-tune (else a fresh network, seeded from the phantom UNet when asked);
    ``structures``: the structures samples are drawn from; ``should_stop``: checked every step (cancellation).
    """
    if tcfg.patch % cfg.divisor:
        raise ValueError(f"the training patch ({tcfg.patch}) must be a multiple of {cfg.divisor} for this network")
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    started = time.perf_counter()
    pool = (
        list(cases)
        if cases is not None
        else [training_phantom(i, cfg.spacing_mm, cfg.hu_window, cache) for i in range(tcfg.cases)]
    )
    data_seconds = time.perf_counter() - started
    if not any(name in case.boxes for case in pool for name in structures):
        raise ValueError("none of the training cases holds a structure this model learns")
    network = build_network(cfg)
    seeded: dict[str, object] | None
    if initial is not None:
        load_weights(network, initial)
        seeded = {"fine_tuned_from_sha256": hashlib.sha256(initial).hexdigest()}
    else:
        seeded = seed_from_unet(network) if tcfg.seed_from_unet and PHANTOM_UNET.exists() else None
    network.train()
    optimiser = torch.optim.AdamW(network.parameters(), lr=tcfg.learning_rate, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, tcfg.steps))))
    )
    loss_fn = DiceCELoss(sigmoid=True)
    losses: list[float] = []
    window: list[float] = []
    for step in range(tcfg.steps):
        if should_stop is not None and should_stop():
            break
        in_loop = network if step >= tcfg.loop_from * tcfg.steps else None
        xs, ys = [], []
        for _ in range(tcfg.batch_size):
            case, name = _pick(pool, rng, structures, tcfg.sample_weights)
            x, y = make_sample(case, name, cfg, tcfg, rng, in_loop)
            xs.append(x)
            ys.append(y)
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(network(torch.stack(xs)), torch.stack(ys))
        loss.backward()
        optimiser.step()
        schedule.step()
        window.append(float(loss.detach()))
        if len(window) == 50 or step == tcfg.steps - 1:
            losses.append(sum(window) / len(window))
            window = []
            if progress is not None:
                progress(step + 1, tcfg.steps, losses[-1])
        if checkpoint is not None and (step + 1) % 100 == 0:
            checkpoint(step + 1, network)
    network.eval()
    return network, TrainResult(
        losses=losses, seconds=time.perf_counter() - started, data_seconds=data_seconds, seeded_from=seeded
    )
