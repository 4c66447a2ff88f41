"""The loop simulation's two starting models: small MONAI UNets pretrained on phantoms, then shipped as weights.

A project starts from models pretrained elsewhere (the PanTS models on public data); here two UNets with different
seeds and disjoint training phantoms, so that they err differently. They are pretrained on the cohort's acquisition
grid (64×64×32 at 5.25×5.25×8 mm: the model space is the scan grid, no resampling, so inference and fine-tuning are
cheap) and on the same anatomical variation as the project's cohort (``COHORT_VARIATION``): the models get the
large organs right and err on a minority of (scan, structure) pairs (mostly the pancreas and the stomach, some
postcava and right lungs), as real pre-annotation does; with a narrower pretraining anatomy (variation 0.5 against
a 1.0 cohort) 45 % of the pairs fall below Dice 0.9, and no ranking could put most of them in the top 20 %.

Run ``python -m bench.loop_models`` (both) or ``python -m bench.loop_models loop_unet_a`` to (re)write
``worker/models/weights/<name>.pt`` and its JSON sidecar; deterministic on CPU for a given torch build.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = ROOT / "worker" / "models" / "weights"
SHAPE = (64, 64, 32)
SPACING = (5.25, 5.25, 8.0)
# The structures both models predict: the abdominal organs, great vessels and lungs of the PanTS schema.
STRUCTURES = (
    "liver",
    "spleen",
    "kidney_left",
    "kidney_right",
    "aorta",
    "postcava",
    "stomach",
    "pancreas",
    "lung_left",
    "lung_right",
)
COHORT_VARIATION = 0.5
PRETRAIN_VARIATION = COHORT_VARIATION
UNET = {"channels": [8, 16, 32, 64], "num_res_units": 1, "norm": "instance"}


@dataclass(frozen=True)
class LoopModel:
    """One starting model: its name, torch seed and first training / validation phantom seeds."""

    name: str
    seed: int
    first_seeds: tuple[int, int]
    config: dict[str, Any]

    @property
    def weights(self) -> Path:
        """The committed weights file."""
        return WEIGHTS_DIR / f"{self.name}.pt"


MODELS = (
    LoopModel("loop_unet_a", 0, (50_000, 59_000), UNET),
    LoopModel("loop_unet_b", 1, (60_000, 69_000), UNET),
)
EPOCHS = 40
N_TRAIN = 24
N_VAL = 4


def pretrain(model: LoopModel, epochs: int = EPOCHS, n_train: int = N_TRAIN, verbose: bool = True) -> float:
    """Pretrain one starting model and write its weights and sidecar; returns its validation mean Dice."""
    import torch

    from worker.models.phantom_model import train_phantom_model
    from worker.models.training import TrainingConfig

    torch.set_num_threads(1)
    cfg = TrainingConfig(
        epochs=epochs,
        learning_rate=2e-3,
        patch_size=(SHAPE[0], SHAPE[1], SHAPE[2]),  # the whole scan: the model space is the scan grid
        batch_size=2,
        samples_per_volume=2,
        seed=model.seed,
    )
    result = train_phantom_model(
        model.weights,
        structures=STRUCTURES,
        n_train=n_train,
        n_val=N_VAL,
        shape=SHAPE,
        spacing=SPACING,
        cfg=cfg,
        architecture="unet",
        config=model.config,
        variation=PRETRAIN_VARIATION,
        first_seeds=model.first_seeds,
        verbose=verbose,
    )
    return float(result.mean_val_dice)


def main(argv: Sequence[str]) -> None:
    """Pretrain the named starting models (all without arguments)."""
    wanted = set(argv) or {m.name for m in MODELS}
    for model in MODELS:
        if model.name in wanted:
            print(f"{model.name}: validation mean Dice {pretrain(model):.4f} -> {model.weights}")


if __name__ == "__main__":
    main(sys.argv[1:])
