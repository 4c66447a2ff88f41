"""The rules the API and the worker share: the architecture catalogue and the sliding-window settings."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from backend.core import inference_rules as rules
from backend.core.config import get_settings
from backend.core.errors import InvalidInput
from backend.registry import service as registry
from worker.models.inference import InferenceConfig


@pytest.fixture
def catalogue() -> Iterator[None]:
    yield
    for name in ("toy-rules", "toy-configured"):
        rules.unregister_architecture(name)


def test_the_bundled_architectures_and_their_traits() -> None:
    assert {"unet", "segresnet", "classical"} <= set(rules.architecture_names())
    assert rules.traits_of("unet").trainable and rules.traits_of("unet").needs_weights
    assert rules.traits_of("segresnet").trainable and rules.traits_of("segresnet").needs_weights
    classical = rules.traits_of("classical")
    assert not classical.trainable and not classical.needs_weights
    with pytest.raises(rules.UnknownArchitecture, match="unknown architecture 'vnet'"):
        rules.traits_of("vnet")
    with pytest.raises(ValueError, match="built-in"):
        rules.unregister_architecture("unet")


def test_registering_an_architecture_is_idempotent_and_refuses_a_second_description(catalogue: None) -> None:
    toy = rules.ArchitectureTraits("toy-rules", trainable=False, needs_weights=True)
    assert rules.register_architecture(toy) is toy
    rules.register_architecture(rules.ArchitectureTraits("toy-rules", trainable=False, needs_weights=True))
    assert rules.traits_of("toy-rules") == toy and "toy-rules" in rules.architecture_names()
    with pytest.raises(ValueError, match="already registered"):
        rules.register_architecture(rules.ArchitectureTraits("toy-rules", trainable=True, needs_weights=True))
    with pytest.raises(ValueError, match="already registered"):
        rules.register_architecture(rules.ArchitectureTraits("unet", trainable=False, needs_weights=False))
    for bad in ("", "Toy", "toy net", "x" * 33, "9lives"):
        with pytest.raises(ValueError, match="architecture name"):
            rules.register_architecture(rules.ArchitectureTraits(bad, trainable=False, needs_weights=False))
    rules.unregister_architecture("toy-rules")
    with pytest.raises(rules.UnknownArchitecture):
        rules.traits_of("toy-rules")


def test_configured_architectures_extend_the_catalogue() -> None:
    extra: dict[str, dict[str, Any]] = {
        "mynet": {"trainable": True, "needs_weights": True},
        "broken": {"trainable": "yes"},
    }
    assert rules.traits_of("mynet", extra) == rules.ArchitectureTraits("mynet", trainable=True, needs_weights=True)
    assert "mynet" in rules.architecture_names(extra)
    with pytest.raises(ValueError, match="true or false"):
        rules.traits_of("broken", extra)
    # The catalogue wins over configuration: a bundled architecture cannot be redescribed.
    assert rules.traits_of("classical", {"classical": {"trainable": True, "needs_weights": True}}).trainable is False


def test_the_registry_service_reads_configured_architectures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKLOOP_EXTRA_ARCHITECTURES", '{"mynet": {"trainable": false, "needs_weights": true}}')
    get_settings.cache_clear()
    try:
        assert registry.architecture_traits("mynet").needs_weights
        assert not registry.is_trainable("mynet")
        assert registry.is_trainable("unet") and not registry.is_trainable("classical")
        assert not registry.is_trainable("gone")  # a plugin architecture no longer configured
        with pytest.raises(InvalidInput, match="unknown architecture 'gone'"):
            registry.architecture_traits("gone")
    finally:
        monkeypatch.delenv("MASKLOOP_EXTRA_ARCHITECTURES")
        get_settings.cache_clear()


BAD_SETTINGS: list[tuple[dict[str, Any], str]] = [
    ({"roi_size": [96, 96]}, "roi_size"),
    ({"roi_size": [96, 0, 96]}, "roi_size"),
    ({"roi_size": [96, True, 96]}, "roi_size"),
    ({"roi_size": "96"}, "roi_size"),
    ({"overlap": 0.1}, "0.25"),
    ({"overlap": 1.0}, "overlap"),
    ({"overlap": "half"}, "overlap"),
    ({"overlap": True}, "overlap"),
    ({"mode": "median"}, "mode"),
    ({"sw_batch_size": 0}, "sw_batch_size"),
    ({"sw_batch_size": 1.5}, "sw_batch_size"),
    ({"device": "tpu"}, "device"),
    ({"device": 0}, "device"),
    ({"amp": "yes"}, "amp"),
    ({"windows": 3}, "unknown"),
]


@pytest.mark.parametrize(("settings", "word"), BAD_SETTINGS)
def test_bad_inference_settings_are_named(settings: dict[str, Any], word: str) -> None:
    problems = rules.inference_problems(settings)
    assert problems and word in problems[0]
    with pytest.raises(rules.InferenceSettingsError, match=word):
        rules.check_inference(settings)
    with pytest.raises(InvalidInput, match=word):
        registry.validate_inference(settings)


def test_good_inference_settings_pass_unchanged() -> None:
    assert rules.inference_problems({}) == []
    good = {"roi_size": [64, 64, 32], "overlap": 0.5, "mode": "constant", "sw_batch_size": 4, "device": "cuda:1"}
    checked = rules.check_inference({**good, "amp": False})
    assert checked == {**good, "amp": False} and checked is not good
    for device in ("auto", "cpu", "cuda", "cuda:0", None):
        assert rules.inference_problems({"device": device}) == []
    assert rules.check_inference(rules.DEFAULT_INFERENCE) == rules.DEFAULT_INFERENCE


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"overlap": 0.24},
        {"overlap": 0.99},
        {"mode": "average"},
        {"sw_batch_size": 0},
        {"roi_size": (16, 0, 16)},
        {"device": "tpu"},
        {"device": "cuda:2"},
        {"amp": False},
    ],
)
def test_the_worker_config_applies_the_same_rules(settings: dict[str, Any]) -> None:
    """InferenceConfig refuses exactly what the API refuses (one set of rules, not two)."""
    api_accepts = rules.inference_problems(settings) == []
    try:
        InferenceConfig(**settings)
        worker_accepts = True
    except ValueError:
        worker_accepts = False
    assert worker_accepts == api_accepts


def test_stored_settings_become_a_worker_config() -> None:
    config = InferenceConfig.from_settings({"roi_size": [32, 32, 16], "overlap": 0.2, "device": "cpu"})
    assert config.roi_size == (32, 32, 16) and config.overlap == rules.MIN_OVERLAP  # older rows: raised to the floor
    assert config.mode == "gaussian" and config.sw_batch_size == 1 and config.amp and config.device == "cpu"
    assert InferenceConfig.from_settings({}).roi_size == (96, 96, 96)


def test_the_shared_rules_import_nothing_outside_the_standard_library() -> None:
    code = (
        "import sys, backend.core.inference_rules\n"
        "heavy = {'numpy', 'torch', 'sqlalchemy', 'pydantic', 'pydantic_settings', 'fastapi', 'monai'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
