"""Fine-tuning promoted weights warms the learning rate up (issue 19: retraining on approved corrections)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from worker.models.training import TrainingConfig, _schedule
from worker.pipelines.training import FINE_TUNE_WARMUP, training_config


def _rates(warmup: float, steps: int = 20, lr: float = 1e-3) -> list[float]:
    optimiser = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = _schedule(optimiser, steps, warmup)
    rates = []
    for _ in range(steps):
        rates.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        scheduler.step()
    return rates


def test_warmup_rises_linearly_then_anneals_to_five_percent() -> None:
    rates = _rates(0.2)
    assert rates[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert all(a >= b for a, b in itertools.pairwise(rates[3:]))
    assert rates[-1] == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 15 / 16))))


def test_no_warmup_is_the_plain_cosine() -> None:
    rates = _rates(0.0)
    assert rates[0] == pytest.approx(1e-3)
    assert rates[10] == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 10 / 20))))


def test_fine_tuning_warms_up_by_default_and_the_model_config_overrides() -> None:
    assert training_config({}, 3, 0).warmup_fraction == 0.0
    assert training_config({}, 3, 0, fine_tune=True).warmup_fraction == FINE_TUNE_WARMUP > 0
    custom = training_config({"training": {"warmup_fraction": 0.5, "learning_rate": 1e-4}}, 3, 0, fine_tune=True)
    assert (custom.warmup_fraction, custom.learning_rate) == (0.5, 1e-4)
    with pytest.raises(ValueError, match="warmup_fraction"):
        TrainingConfig(warmup_fraction=1.0)
