"""Training loop, Dice policy, weight (de)serialisation and the shipped phantom model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.imaging.phantom import generate_phantom
from worker.models.inference import InferenceConfig, predict_probabilities
from worker.models.networks import build_network
from worker.models.phantom_model import DEFAULT_WEIGHTS, phantom_samples
from worker.models.preprocessing import Preprocessing
from worker.models.training import (
    TrainingCancelled,
    TrainingConfig,
    dice_per_channel,
    load_weights,
    save_weights,
    train,
)

torch.set_num_threads(min(2, torch.get_num_threads()))

TINY_UNET = {"channels": (4, 8, 16), "num_res_units": 0}
STRUCTURES = ["liver", "lung_left", "spleen"]
SHAPE = (32, 32, 24)
SPACING = (10.0, 10.0, 10.0)
PREP = Preprocessing(target_spacing=SPACING)
CFG = TrainingConfig(epochs=3, learning_rate=1e-2, patch_size=(24, 24, 24), batch_size=2, samples_per_volume=4)


def test_dice_per_channel_policy() -> None:
    truth = np.zeros((4, 4, 4, 4), dtype=bool)
    pred = np.zeros_like(truth)
    truth[0, :2] = True
    pred[0, :1] = True  # 16 of 32 -> 2 * 16 / 48
    truth[1, 0, 0, 0] = True  # truth only -> 0
    pred[2, 0, 0, 0] = True  # prediction only -> 0
    # channel 3: both empty -> 1
    assert dice_per_channel(pred, truth) == pytest.approx([2 / 3, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        dice_per_channel(pred[:2], truth)


def test_three_epochs_lower_the_loss_deterministically() -> None:
    samples = phantom_samples([100, 101], STRUCTURES, SHAPE, SPACING)
    runs = []
    epochs_seen: list[int] = []
    for _ in range(2):
        torch.manual_seed(0)
        net = build_network("unet", TINY_UNET, len(STRUCTURES))
        result = train(net, samples, samples[:1], PREP, CFG, progress=lambda e, _loss: epochs_seen.append(e))
        runs.append(result)
    first = runs[0]
    assert first.epochs_run == 3 and len(first.losses) == 3
    assert first.losses[-1] < first.losses[0]
    assert runs[1].losses == pytest.approx(first.losses, rel=1e-4)  # same seed, same weights -> same run
    assert epochs_seen == [1, 2, 3, 1, 2, 3]
    assert set(first.val_dice) == {0, 1, 2}
    assert all(0.0 <= d <= 1.0 for d in first.val_dice.values())
    assert first.mean_val_dice == pytest.approx(float(np.mean(list(first.val_dice.values()))))


def test_should_stop_cancels_training() -> None:
    samples = phantom_samples([100], STRUCTURES, SHAPE, SPACING)
    net = build_network("unet", TINY_UNET, len(STRUCTURES))
    with pytest.raises(TrainingCancelled):
        train(net, samples, [], PREP, CFG, should_stop=lambda: True)


def test_save_load_weights_round_trip() -> None:
    torch.manual_seed(1)
    a = build_network("unet", TINY_UNET, 2)
    torch.manual_seed(2)
    b = build_network("unet", TINY_UNET, 2)
    x = torch.rand(1, 1, 16, 16, 16)
    a.eval()
    b.eval()
    with torch.no_grad():
        assert not torch.equal(a(x), b(x))
        load_weights(b, save_weights(a))
        assert torch.equal(a(x), b(x))
    with pytest.raises(RuntimeError):
        load_weights(build_network("unet", TINY_UNET, 3), save_weights(a))  # wrong head: strict load fails


def test_shipped_phantom_model_loads_and_segments() -> None:
    sidecar_path = DEFAULT_WEIGHTS.with_suffix(".json")
    if not DEFAULT_WEIGHTS.exists():
        pytest.skip("phantom weights not trained yet")
    assert DEFAULT_WEIGHTS.stat().st_size < 5 * 1024 * 1024
    meta = json.loads(Path(sidecar_path).read_text(encoding="utf-8"))
    net = build_network(meta["architecture"], meta["config"], len(meta["structures"]))
    load_weights(net, DEFAULT_WEIGHTS.read_bytes())
    prep = Preprocessing.from_json(meta["preprocessing"])
    ph = generate_phantom((96, 96, 64), (3.5, 3.5, 4.0), seed=4242)
    roi = tuple(meta["inference"]["roi_size"])
    probs = predict_probabilities(net, ph.volume, ph.affine, prep, InferenceConfig(roi_size=roi, device="cpu"))
    truth = np.stack([ph.masks[n] for n in meta["structures"]])
    dice = dict(zip(meta["structures"], dice_per_channel(probs > 0.5, truth), strict=True))
    assert dice["liver"] > 0.8, dice
    assert dice["lung_left"] > 0.8, dice
