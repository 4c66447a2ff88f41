"""The predictor registry: bundled predictors, registration of a new one, the pipeline's look-up and checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from backend.core import inference_rules
from backend.core.blobstore import LocalBlobStore
from backend.core.errors import InvalidInput
from backend.imaging.phantom import generate_phantom
from worker.models import networks, predictors
from worker.models.classical import classical_probabilities
from worker.models.predictors import ArchitectureTraits, Hooks, ModelSpec, NetworkPredictor
from worker.pipelines import predictors as pipeline


class EchoPredictor:
    """The volume's sign as probabilities, ``channels`` channels whatever the model asks (to test the checks)."""

    traits = ArchitectureTraits("echo-unit", trainable=False, needs_weights=False)
    channels: int | None = None

    def __init__(self) -> None:
        self.prepared = 0

    def prepare(self, spec: ModelSpec, weights: bytes | None) -> str:
        self.prepared += 1
        return "ready"

    def predict(self, prepared: str, spec: ModelSpec, volume: np.ndarray, affine: np.ndarray, hooks: Hooks) -> Any:
        assert prepared == "ready"
        if hooks.timings is not None:
            hooks.timings["echo_s"] = 0.0
        return (np.asarray(volume) > 0).astype(np.float64)

    def postprocess(self, raw: np.ndarray, spec: ModelSpec) -> np.ndarray:
        return np.repeat(raw[None], self.channels or len(spec.structures), axis=0)


@pytest.fixture
def echo() -> Iterator[EchoPredictor]:
    predictor = predictors.register(EchoPredictor())
    yield predictor
    predictors.unregister("echo-unit")


def _spec(architecture: str, structures: tuple[str, ...] = ("liver",), weights: str | None = None) -> ModelSpec:
    return ModelSpec("m", 1, architecture, {}, structures, {}, {}, weights)


def test_the_bundled_predictors_are_registered_with_the_catalogue_traits() -> None:
    assert {"unet", "segresnet", "classical"} <= set(predictors.architectures())
    for name in ("unet", "segresnet", "classical"):
        assert predictors.get(name).traits == inference_rules.traits_of(name)
    assert isinstance(predictors.get("unet"), NetworkPredictor)
    assert not isinstance(predictors.get("classical"), NetworkPredictor)
    assert set(networks.ARCHITECTURES) == {"unet", "segresnet"}
    with pytest.raises(ValueError, match="no network"):
        networks.build_network("classical", {}, 1)
    with pytest.raises(predictors.UnknownArchitecture, match="MASKLOOP_PREDICTOR_MODULES"):
        predictors.get("vnet")


def test_a_registration_adds_the_architecture_and_refuses_a_takeover(echo: EchoPredictor) -> None:
    assert predictors.get("echo-unit") is echo and "echo-unit" in inference_rules.architecture_names()
    again = predictors.register(EchoPredictor())  # the same class again (a module imported twice) replaces it
    assert predictors.get("echo-unit") is again

    class Impostor(EchoPredictor):
        traits = inference_rules.traits_of("unet")

    with pytest.raises(ValueError, match="already has the predictor"):
        predictors.register(Impostor())
    predictors.unregister("echo-unit")
    assert "echo-unit" not in inference_rules.architecture_names()
    with pytest.raises(predictors.UnknownArchitecture):
        predictors.get("echo-unit")


def test_load_modules_imports_named_modules() -> None:
    assert predictors.load_modules("") == []
    assert predictors.load_modules(" json , ,collections ") == ["json", "collections"]
    with pytest.raises(ModuleNotFoundError):
        predictors.load_modules(["no_such_predictor_module"])


def test_the_pipeline_prepares_once_and_checks_the_output(echo: EchoPredictor, tmp_path: Any) -> None:
    blobs = LocalBlobStore(tmp_path)
    volume = np.arange(-8, 8, dtype=np.float32).reshape(2, 2, 4)
    spec = _spec("echo-unit", ("liver", "spleen"))
    timings: dict[str, float] = {}
    probs = pipeline.predict(spec, blobs, volume, np.eye(4), timings=timings)
    assert probs.dtype == np.float32 and probs.shape == (2, 2, 2, 4) and "echo_s" in timings
    assert np.array_equal(probs[1], (volume > 0).astype(np.float32))
    pipeline.predict(spec, blobs, volume, np.eye(4))
    assert echo.prepared == 1  # cached per worker process
    echo.channels = 3
    with pytest.raises(ValueError, match="expected \\(2, 2, 2, 4\\)"):
        pipeline.predict(spec, blobs, volume, np.eye(4))


def test_the_pipeline_refuses_unknown_architectures_and_missing_weights(tmp_path: Any) -> None:
    blobs = LocalBlobStore(tmp_path)
    volume = np.zeros((4, 4, 4), dtype=np.float32)
    with pytest.raises(InvalidInput, match="unknown architecture 'vnet'"):
        pipeline.predict(_spec("vnet"), blobs, volume, np.eye(4))
    with pytest.raises(InvalidInput, match="has no weights"):
        pipeline.predict(_spec("unet"), blobs, volume, np.eye(4))
    with pytest.raises(InvalidInput, match="missing from the blob store"):
        pipeline.predict(_spec("unet", weights="0" * 64), blobs, volume, np.eye(4))


def test_the_classical_predictor_is_the_classical_pre_annotator(tmp_path: Any) -> None:
    phantom = generate_phantom((48, 48, 24), (5.0, 5.0, 8.0), seed=1)
    seen: list[float] = []
    probs = pipeline.predict(
        _spec("classical", ("liver", "spleen")), LocalBlobStore(tmp_path), phantom.volume, phantom.affine, seen.append
    )
    expected = classical_probabilities(phantom.volume, phantom.affine, ["liver", "spleen"])
    assert np.array_equal(probs, expected) and seen == [0.0, 1.0]
