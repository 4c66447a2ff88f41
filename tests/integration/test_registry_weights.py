"""Uploaded weights checked for real by a worker (strict load into the network, one forward pass), and attention
launched together with pre-annotations waiting for them (the demo's order), on Redis, PostgreSQL and Celery."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import generate_phantom
from backend.jobs import outbox
from backend.jobs import service as jobs
from backend.models import Job, Project
from backend.registry import service as registry
from tests.integration.worker_stack import Stack, build_stack
from worker.models.networks import build_network
from worker.models.training import save_weights
from worker.pipelines import attention
from worker.pipelines.common import JobBusy

CONFIG = {"channels": [8, 16]}
STRUCTURES = ["liver", "spleen"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with build_stack(tmp_path_factory.mktemp("weights")) as built:
        built.start_worker("w1")
        yield built


def _upload(stack: Stack, model_id: int, weights: bytes) -> Any:
    return stack.client.post(
        f"/api/models/{model_id}/versions",
        headers=stack.headers["lead"],
        files={"weights": ("w.pt", weights, "application/octet-stream")},
    )


def _state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_garbage_and_mismatched_weights_are_refused_and_good_ones_promoted(stack: Stack) -> None:
    lead = stack.headers["lead"]
    created = stack.client.post(
        f"/api/projects/{stack.project.id}/models",
        headers=lead,
        json={"name": "checked", "architecture": "unet", "structures": STRUCTURES, "config": CONFIG},
    )
    assert created.status_code == 201, created.text
    model_id = created.json()["id"]

    garbage = _upload(stack, model_id, b"\x13\x37 thirty bytes of garbage \xff\xfe")
    assert garbage.status_code == 422, garbage.text
    assert "not a torch state_dict file" in garbage.json()["detail"]
    wider = _upload(stack, model_id, save_weights(build_network("unet", {"channels": [8, 16, 32]}, 2)))
    assert wider.status_code == 422 and "does not fit the network" in wider.json()["detail"], wider.text
    three_outputs = _upload(stack, model_id, save_weights(build_network("unet", CONFIG, 3)))
    assert three_outputs.status_code == 422 and "size mismatch" in three_outputs.json()["detail"]
    state = build_network("unet", CONFIG, 2).state_dict()
    first_weight = next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)
    state[first_weight] = torch.full_like(state[first_weight], float("nan"))
    nan = _upload(stack, model_id, _state_bytes(state))
    assert nan.status_code == 422 and "NaN" in nan.json()["detail"], nan.text
    assert _upload(stack, model_id, _state_bytes({})).status_code == 422

    good = _upload(stack, model_id, save_weights(build_network("unet", CONFIG, 2)))
    assert good.status_code == 201, good.text
    assert good.json()["weights_status"] == "valid" and good.json()["weights_check"]["seconds"] >= 0
    promoted = stack.client.post(f"/api/model-versions/{good.json()['id']}/promote", headers=lead)
    assert promoted.status_code == 200, promoted.text
    versions = stack.client.get(f"/api/models/{model_id}/versions", headers=lead).json()
    assert [v["weights_status"] for v in versions] == ["invalid"] * 5 + ["valid"]
    refused = stack.client.post(f"/api/model-versions/{versions[0]['id']}/promote", headers=lead)
    assert refused.status_code == 422 and "refused" in refused.json()["detail"]
    checks = [stack.job(v["weights_check"]["job_id"]) for v in versions]
    assert all(j["kind"] == "check_weights" and j["queue"] == "cpu" and j["status"] == "succeeded" for j in checks)


def _scan(stack: Stack, case_id: str) -> int:
    phantom = generate_phantom((48, 48, 24), (6.0, 6.0, 10.0), seed=11, lesion=False)
    response = stack.client.post(
        f"/api/projects/{stack.project.id}/scans",
        headers=stack.headers["lead"],
        files={"file": (f"{case_id}.nii.gz", to_nifti_gz(phantom.volume, phantom.affine), "application/gzip")},
        data={"case_id": case_id},
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def test_attention_waits_for_the_pre_annotations_launched_before_it(stack: Stack) -> None:
    scan_id = _scan(stack, "wait-1")
    with stack.factory() as db:
        project = db.get(Project, stack.project.id)
        assert project is not None
        pending = jobs.create_job(db, project_id=project.id, kind="preannotate", created_by=None, scan_id=scan_id)
        waiting = jobs.create_job(db, project_id=project.id, kind="attention", created_by=None, scan_id=scan_id)
        outbox.withhold(db, [pending, waiting])  # run here, not by the worker
        db.commit()
        pending_id, waiting_id = pending.id, waiting.id
    with pytest.raises(JobBusy):
        attention.run(waiting_id)
    with stack.factory() as db:
        job = db.get(Job, waiting_id)
        assert job is not None
        assert job.status == "queued" and job.attempts == 0, (job.status, job.attempts)
        assert f"waiting for the pre-annotation jobs [{pending_id}]" in job.message
        db.get(Job, pending_id).status = "cancelled"  # type: ignore[union-attr]
        db.commit()

    # The demo's order for real: two pre-annotations and the attention queued at once; the attention job waits
    # for both, whichever the worker takes first.
    with stack.factory() as db:
        model = registry.ensure_classical_model(db, stack.blobs, stack.project.id)
        assert model is not None
        second = registry.add_version(db, stack.blobs, model, weights=None)
        db.commit()
        version_ids = [v.id for v in registry.list_versions(db, model)]
    launched = [
        stack.client.post(
            f"/api/projects/{stack.project.id}/preannotate",
            headers=stack.headers["lead"],
            json={"model_version_id": version_id, "scan_ids": [scan_id]},
        )
        for version_id in version_ids
    ]
    assert all(r.status_code == 201 for r in launched) and second.id in version_ids
    queued = stack.client.post(
        f"/api/projects/{stack.project.id}/attention", headers=stack.headers["lead"], json={"scan_ids": [scan_id]}
    )
    assert queued.status_code == 201, queued.text
    done = stack.wait_job(queued.json()[0]["id"], timeout=240)
    assert done["status"] == "succeeded", done
    assert sorted(done["result"]["model_version_ids"]) == sorted(version_ids)
