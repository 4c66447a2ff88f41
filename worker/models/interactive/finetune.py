"""Fine-tuning the click-guided model on approved label versions (a training job), measured with the clicker.

The samples are real scans (volume, affine, the approved masks by structure); they are moved to the model grid
as the phantoms are, and training continues from the promoted version's weights with the same simulated
clicker. Held-out scans are measured as the bundled model is (clicks from an empty mask, each at the centre of
the largest error), so a version's per-structure Dice is "Dice after ``clicks`` clicks" and the promotion check
compares like with like.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from worker.models.interactive.evaluation import evaluate_heldout
from worker.models.interactive.model import InteractiveConfig, load_interactive_model_bytes
from worker.models.interactive.phantoms import ModelSpaceCase, model_space_case
from worker.models.interactive.training import TrainConfig, TrainResult, train_interactive
from worker.models.training import save_weights

__all__ = ["ScanSample", "fine_tune", "measure_clicks", "steps_for"]

# Training steps per epoch and training scan (each step draws two (scan, structure) patches).
STEPS_PER_SCAN = 4
MIN_STEPS = 10


@dataclass(frozen=True)
class ScanSample:
    """A scan with its approved masks (at the scan's own grid)."""

    case_id: str
    volume: np.ndarray
    affine: np.ndarray
    masks: Mapping[str, np.ndarray]


def steps_for(epochs: int, scans: int) -> int:
    """Training steps of a fine-tuning job: ``STEPS_PER_SCAN`` per training scan and epoch, at least ``MIN_STEPS``."""
    return max(MIN_STEPS, epochs * STEPS_PER_SCAN * scans)


def _on_model_grid(samples: Sequence[ScanSample], cfg: InteractiveConfig) -> list[ModelSpaceCase]:
    return [
        model_space_case(
            s.volume, s.affine, {n: np.asarray(m) for n, m in s.masks.items()}, cfg.spacing_mm, cfg.hu_window
        )
        for s in samples
    ]


def fine_tune(
    config: Mapping[str, object],
    structures: Sequence[str],
    samples: Sequence[ScanSample],
    *,
    initial: bytes | None,
    epochs: int,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[bytes, TrainResult]:
    """Continue training from ``initial`` weights (or from scratch) on the samples; returns the new weights."""
    cfg = InteractiveConfig.from_json(config)
    cases = _on_model_grid(samples, cfg)
    tcfg = TrainConfig(steps=steps_for(epochs, len(cases)), cases=len(cases), seed=seed, seed_from_unet=False)
    network, result = train_interactive(
        cfg, tcfg, progress, cases=cases, initial=initial, structures=tuple(structures), should_stop=should_stop
    )
    return save_weights(network), result


def measure_clicks(
    weights: bytes,
    config: Mapping[str, object],
    structures: Sequence[str],
    samples: Sequence[ScanSample],
    *,
    clicks: int = 3,
    max_clicks: int = 5,
) -> dict[str, object]:
    """Held-out figures of a version: per structure the median Dice after ``clicks`` simulated clicks, their mean
    (``mean_dice``), and the clicker's summary (curves, clicks to Dice 0.90 capped at ``max_clicks``, at most the
    model's own click limit)."""
    model = load_interactive_model_bytes(weights, config, structures)
    # A session never sends more clicks than the model takes in one request (every click so far is sent).
    max_clicks = max(clicks, min(max_clicks, model.config.max_clicks))
    cases = [(s.case_id, s.volume, s.affine, {n: np.asarray(m) for n, m in s.masks.items()}) for s in samples]
    runs, summary = evaluate_heldout(model, cases, structures, curve_clicks=clicks, max_clicks=max_clicks)
    per_structure: dict[str, float] = {}
    for name in structures:
        mine = [r.at(clicks) for r in runs if r.structure == name]
        if mine:
            per_structure[name] = float(np.median(mine))
    mean = float(np.mean(list(per_structure.values()))) if per_structure else 0.0
    return {"mean_dice": mean, "per_structure": per_structure, "clicks": clicks, "clicker": summary}
