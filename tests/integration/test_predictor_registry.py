"""A new architecture is one module and one registration: a toy predictor defined here pre-annotates end to end.

The toy predictor is registered when this module is imported: in the test process (where the API runs, so the
architecture is in its catalogue) and in a real Celery worker started with ``MASKLOOP_PREDICTOR_MODULES`` naming
this module. No other module of the platform knows about it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from backend.core import inference_rules
from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import generate_phantom
from backend.models import LabelVersion, Prediction
from tests.integration.worker_stack import Stack, build_stack
from worker.models import predictors
from worker.models.predictors import ArchitectureTraits, Hooks, ModelSpec

pytestmark = pytest.mark.slow

SHAPE, SPACING = (32, 32, 16), (5.0, 5.0, 8.0)


class ToyPredictor:
    """Everything brighter than a threshold (its 'weights': a JSON file) is each of the model's structures."""

    traits = ArchitectureTraits("toy", trainable=False, needs_weights=True, summary="HU threshold (a test)")

    def prepare(self, spec: ModelSpec, weights: bytes | None) -> float:
        """The threshold in HU."""
        assert weights is not None
        return float(json.loads(weights)["threshold_hu"])

    def predict(self, prepared: float, spec: ModelSpec, volume: np.ndarray, affine: np.ndarray, hooks: Hooks) -> Any:
        """One boolean mask for all structures."""
        if hooks.progress:
            hooks.progress(1.0)
        return np.asarray(volume) > prepared

    def postprocess(self, raw: np.ndarray, spec: ModelSpec) -> np.ndarray:
        """Confident inside, confident outside, one channel per structure."""
        probs = np.where(raw, np.float32(0.9), np.float32(0.1)).astype(np.float32)
        return np.repeat(probs[None], len(spec.structures), axis=0)


predictors.register(ToyPredictor())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with build_stack(tmp_path_factory.mktemp("predictors")) as built:
        built.start_worker("toy", extra_env={"MASKLOOP_PREDICTOR_MODULES": __name__})
        yield built


def test_a_toy_predictor_registered_in_a_test_preannotates_end_to_end(stack: Stack) -> None:
    assert "toy" in inference_rules.architecture_names()
    lead = stack.headers["lead"]
    phantom = generate_phantom(SHAPE, SPACING, seed=3)
    scan = stack.client.post(
        f"/api/projects/{stack.project.id}/scans",
        headers=lead,
        files={"file": ("toy-1.nii.gz", to_nifti_gz(phantom.volume, phantom.affine), "application/gzip")},
        data={"case_id": "toy-1"},
    )
    assert scan.status_code == 201, scan.text
    scan_id = int(scan.json()["id"])

    model = stack.client.post(
        f"/api/projects/{stack.project.id}/models",
        headers=lead,
        json={"name": "toy-threshold", "architecture": "toy", "structures": ["liver", "spleen"]},
    )
    assert model.status_code == 201, model.text
    # The traits come with the registration: a toy model cannot be retrained, so the auto policy is refused.
    auto = {"promotion": {"policy": "auto", "retrain_every_approvals": 2}}
    refused = stack.client.patch(f"/api/models/{model.json()['id']}", headers=lead, json=auto)
    assert refused.status_code == 422 and "retrain" in refused.json()["detail"]
    url = f"/api/models/{model.json()['id']}/versions"
    version = stack.client.post(
        url, headers=lead, files={"weights": ("toy.json", json.dumps({"threshold_hu": 100}).encode(), "text/plain")}
    )
    assert version.status_code == 201, version.text
    version_id = int(version.json()["id"])
    assert stack.client.post(f"/api/model-versions/{version_id}/promote", headers=lead).status_code == 200

    launched = stack.client.post(
        f"/api/projects/{stack.project.id}/preannotate",
        headers=lead,
        json={"model": "toy-threshold", "scan_ids": [scan_id]},
    )
    assert launched.status_code == 201, launched.text
    [job] = launched.json()
    done = stack.wait_job(job["id"])
    assert done["status"] == "succeeded", done

    expected = int(np.count_nonzero(phantom.volume > 100))
    assert 0 < expected < phantom.volume.size
    assert done["result"]["voxels"] == {"liver": expected, "spleen": expected}
    with stack.factory() as db:
        [label_version] = db.scalars(select(LabelVersion).where(LabelVersion.scan_id == scan_id)).all()
        assert label_version.kind == "model" and label_version.author_model_version_id == version_id
        prediction = db.scalar(select(Prediction).where(Prediction.job_id == job["id"]))
        assert prediction is not None and set(prediction.maps) == {"liver", "spleen"}


def test_a_model_of_an_unregistered_architecture_is_refused(stack: Stack) -> None:
    refused = stack.client.post(
        f"/api/projects/{stack.project.id}/models",
        headers=stack.headers["lead"],
        json={"name": "nope", "architecture": "not-registered", "structures": ["liver"]},
    )
    assert refused.status_code == 422 and "architecture" in refused.json()["detail"]
