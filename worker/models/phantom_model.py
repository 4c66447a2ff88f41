"""Train the project's own small UNet on synthetic phantoms (no downloads) and write weights + a JSON sidecar.

Run: ``python -m worker.models.phantom_model [out.pt]`` (default ``worker/models/weights/phantom_unet.pt``).
The phantom generator lives in ``backend.imaging.phantom`` and is imported lazily, only by this trainer.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worker.models.networks import build_network, count_parameters
from worker.models.preprocessing import Preprocessing
from worker.models.training import TrainingConfig, TrainingResult, TrainingSample, save_weights, train

__all__ = ["PHANTOM_MODEL_STRUCTURES", "UNET_CONFIG", "phantom_samples", "train_phantom_model"]

PHANTOM_MODEL_STRUCTURES: tuple[str, ...] = (
    "liver",
    "spleen",
    "kidney_left",
    "kidney_right",
    "aorta",
    "postcava",
    "stomach",
    "pancreas",
    "pancreas_head",
    "pancreas_body",
    "pancreas_tail",
    "lung_left",
    "lung_right",
)
UNET_CONFIG: dict[str, Any] = {"channels": [8, 16, 32, 64], "num_res_units": 1, "norm": "instance"}
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "phantom_unet.pt"


def phantom_samples(
    seeds: Sequence[int],
    structures: Sequence[str],
    shape: Sequence[int],
    spacing: Sequence[float],
    variation: float = 0.0,
) -> list[TrainingSample]:
    """Training samples drawn from phantoms of the given seeds (half of them with a lesion; ``variation`` as in
    ``generate_phantom``: 0 draws the default anatomy)."""
    from backend.imaging.phantom import generate_phantom  # lazy: only the trainer needs it

    out = []
    for seed in seeds:
        ph = generate_phantom(
            tuple(shape), tuple(spacing), seed=int(seed), lesion=bool(seed % 2), variation=float(variation)
        )
        masks = np.stack([ph.masks[name] for name in structures])
        out.append(TrainingSample(volume=ph.volume, affine=ph.affine, masks=masks))
    return out


def train_phantom_model(
    out_path: Path,
    structures: Sequence[str] = PHANTOM_MODEL_STRUCTURES,
    n_train: int = 8,
    n_val: int = 2,
    epochs: int = 30,
    shape: Sequence[int] = (96, 96, 64),
    spacing: Sequence[float] = (3.5, 3.5, 4.0),
    cfg: TrainingConfig | None = None,
    architecture: str = "unet",
    config: dict[str, Any] | None = None,
    variation: float = 0.0,
    first_seeds: tuple[int, int] = (100, 900),
    verbose: bool = True,
) -> TrainingResult:
    """Train a small network on phantoms (seeds ``first_seeds[0]``.. train, ``first_seeds[1]``.. val, shape
    ``variation`` as in ``generate_phantom``); write ``out_path`` and ``out_path.json``."""
    out_path = Path(out_path)
    structures = list(structures)
    config = dict(UNET_CONFIG if config is None else config)
    prep = Preprocessing(target_spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])))
    cfg = cfg or TrainingConfig(epochs=epochs, seed=0)
    torch.manual_seed(cfg.seed)
    network = build_network(architecture, config, out_channels=len(structures))
    train0, val0 = first_seeds
    train_set = phantom_samples(range(train0, train0 + n_train), structures, shape, spacing, variation)
    val_set = phantom_samples(range(val0, val0 + n_val), structures, shape, spacing, variation)
    started = time.perf_counter()

    def report(epoch: int, loss: float) -> None:
        if verbose:
            print(f"epoch {epoch:3d}/{cfg.epochs}  loss {loss:.4f}  {time.perf_counter() - started:7.1f} s", flush=True)

    result = train(network, train_set, val_set, prep, cfg, progress=report)
    data = save_weights(network)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(data)
    sidecar = {
        "architecture": architecture,
        "config": config,
        "structures": structures,
        "activation": "sigmoid",
        "preprocessing": prep.to_json(),
        "inference": {"roi_size": list(cfg.patch_size), "overlap": 0.25, "mode": "gaussian"},
        "training": {
            "epochs": cfg.epochs,
            "learning_rate": cfg.learning_rate,
            "patch_size": list(cfg.patch_size),
            "batch_size": cfg.batch_size,
            "samples_per_volume": cfg.samples_per_volume,
            "seed": cfg.seed,
            "train_seeds": [train0, train0 + n_train - 1],
            "val_seeds": [val0, val0 + n_val - 1],
            "phantom_variation": float(variation),
            "phantom_shape": [int(s) for s in shape],
            "phantom_spacing": [float(s) for s in spacing],
            "final_loss": result.losses[-1] if result.losses else None,
            "seconds": round(result.seconds, 1),
            "torch_threads": torch.get_num_threads(),
        },
        "parameters": count_parameters(network),
        "val_dice": {structures[c]: round(d, 4) for c, d in result.val_dice.items()},
        "mean_val_dice": round(result.mean_val_dice, 4),
        "weights_sha256": hashlib.sha256(data).hexdigest(),
    }
    out_path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return result


def main(argv: Sequence[str]) -> None:
    """Command-line entry: train with the defaults and print the validation Dice."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = Path(argv[0]) if argv else DEFAULT_WEIGHTS
    epochs = int(argv[1]) if len(argv) > 1 else 30
    result = train_phantom_model(out, epochs=epochs)
    for c, d in result.val_dice.items():
        print(f"{PHANTOM_MODEL_STRUCTURES[c]:14s} {d:.4f}")
    print(f"mean {result.mean_val_dice:.4f}  ({result.seconds:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
