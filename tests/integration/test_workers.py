"""Model workers for real: Redis broker, Celery worker processes, PostgreSQL, MONAI inference."""

from __future__ import annotations

import gzip
import signal
import time
from collections.abc import Iterator
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from sqlalchemy import func, select

from backend.core import queue
from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import generate_phantom
from backend.imaging.softmaps import ENTROPY_OF_QUANTISED
from backend.models import Job, LabelVersion, Model, ModelVersion, Prediction
from tests.integration.worker_stack import Stack, build_stack
from worker.models.networks import build_network
from worker.models.training import save_weights

pytestmark = pytest.mark.slow


def _reads_of(stack: Stack, kind: str, reader: dict[str, str]) -> set[str]:
    """The details (structure, map) of the logged reads of one kind by the user behind the reader's token."""
    me = stack.client.get("/api/auth/me", headers=reader).json()
    reads = stack.client.get(
        f"/api/projects/{stack.project.id}/audit/reads",
        headers=stack.headers["lead"],
        params={"kind": kind, "user_id": me["id"], "page_size": 100},
    )
    assert reads.status_code == 200, reads.text
    return {item["detail"] for item in reads.json()["items"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with build_stack(tmp_path_factory.mktemp("workers")) as built:
        built.start_worker("w1")
        yield built


def _scan(stack: Stack, case_id: str, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> int:
    phantom = generate_phantom(shape, spacing, seed=len(case_id))
    response = stack.client.post(
        f"/api/projects/{stack.project.id}/scans",
        headers=stack.headers["lead"],
        files={"file": (f"{case_id}.nii.gz", to_nifti_gz(phantom.volume, phantom.affine), "application/gzip")},
        data={"case_id": case_id},
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _model(stack: Stack, name: str, **body: Any) -> dict[str, Any]:
    response = stack.client.post(
        f"/api/projects/{stack.project.id}/models", headers=stack.headers["lead"], json={"name": name, **body}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def _random_unet(stack: Stack, name: str, structures: list[str], spacing: tuple[float, float, float]) -> int:
    """A UNet with random weights (slow enough on CPU to watch), registered and promoted; returns the version id."""
    model = _model(
        stack,
        name,
        architecture="unet",
        structures=structures,
        config={"channels": [8, 16, 32, 64]},
        preprocessing={"target_spacing": list(spacing)},
        inference={"roi_size": [64, 64, 64], "overlap": 0.5},
    )
    weights = save_weights(build_network("unet", {"channels": [8, 16, 32, 64]}, len(structures)))
    response = stack.client.post(
        f"/api/models/{model['id']}/versions",
        headers=stack.headers["lead"],
        files={"weights": ("w.pt", weights, "application/octet-stream")},
    )
    assert response.status_code == 201, response.text
    version_id = int(response.json()["id"])
    promoted = stack.client.post(f"/api/model-versions/{version_id}/promote", headers=stack.headers["lead"])
    assert promoted.status_code == 200, promoted.text
    return version_id


def _classical_version(stack: Stack) -> int:
    models = stack.client.get(f"/api/projects/{stack.project.id}/models", headers=stack.headers["lead"]).json()
    existing = [m for m in models if m["name"] == "classical-hu"]
    if existing:
        return int(existing[0]["promoted_version"]["id"])
    model = _model(stack, "classical-hu", architecture="classical", structures=["liver", "spleen", "lung_left"])
    with stack.factory() as db:
        version = ModelVersion(model_id=model["id"], number=1, is_promoted=True)
        db.add(version)
        db.commit()
        return version.id


def _preannotate(stack: Stack, **body: Any) -> list[dict[str, Any]]:
    response = stack.client.post(
        f"/api/projects/{stack.project.id}/preannotate", headers=stack.headers["lead"], json=body
    )
    assert response.status_code == 201, response.text
    return list(response.json())


def _versions_of(stack: Stack, scan_id: int) -> list[LabelVersion]:
    with stack.factory() as db:
        return list(db.scalars(select(LabelVersion).where(LabelVersion.scan_id == scan_id).order_by(LabelVersion.id)))


def test_preannotation_writes_a_model_version_authored_by_the_model(stack: Stack) -> None:
    scan_id = _scan(stack, "pre-1", (64, 64, 32), (5.0, 5.0, 8.0))
    version_id = _classical_version(stack)
    [job] = _preannotate(stack, model_version_id=version_id, scan_ids=[scan_id])
    assert job["status"] == "queued" and job["queue"] == "gpu"
    done = stack.wait_job(job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == 100.0 and done["run_seconds"] is not None
    versions = _versions_of(stack, scan_id)
    assert len(versions) == 1
    assert versions[0].kind == "model" and versions[0].author_model_version_id == version_id
    assert done["result"]["label_version_id"] == versions[0].id
    assert done["result"]["voxels"]["liver"] > 0
    # Soft maps are kept for the attention step, quantised to uint8.
    predictions = stack.client.get(f"/api/scans/{scan_id}/predictions", headers=stack.headers["viewer"]).json()
    assert predictions[0]["model_version_id"] == version_id
    probability = stack.client.get(
        f"/api/scans/{scan_id}/predictions/{predictions[0]['id']}/probability/liver", headers=stack.headers["viewer"]
    )
    assert probability.status_code == 200
    # Stored cropped to the map's non-zero box, served on the scan's whole grid; entropy is derived from it.
    shown = nib.Nifti1Image.from_bytes(gzip.decompress(probability.content))
    assert shown.shape == (64, 64, 32) and int(np.asarray(shown.dataobj).max()) > 128
    entropy = stack.client.get(
        f"/api/scans/{scan_id}/predictions/{predictions[0]['id']}/entropy/liver", headers=stack.headers["viewer"]
    )
    assert entropy.status_code == 200
    doubt = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(entropy.content)).dataobj)
    assert np.array_equal(doubt, ENTROPY_OF_QUANTISED[np.asarray(shown.dataobj, dtype=np.uint8)])
    # Both map downloads are reads of patient-derived data: logged with who and what.
    assert _reads_of(stack, "prediction", stack.headers["viewer"]) >= {"probability/liver", "entropy/liver"}
    # A rerun of the same task (a duplicate delivery) never creates a second version.
    queue.send(queue.TASK_PREANNOTATE, job["id"], "gpu", attempt=1)
    time.sleep(3)
    assert len(_versions_of(stack, scan_id)) == 1
    assert stack.job(job["id"])["attempts"] == 1


def test_progress_and_queue_position_change_while_jobs_run(stack: Stack) -> None:
    spacing = (2.0, 2.0, 2.5)
    version_id = _random_unet(stack, "slow-unet", ["liver", "spleen"], spacing)
    scan_ids = [_scan(stack, f"queue-{i}", (128, 128, 96), spacing) for i in range(3)]
    jobs = _preannotate(stack, model_version_id=version_id, scan_ids=scan_ids)
    last = jobs[-1]["id"]
    positions, progresses = set(), []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        first, tail = stack.job(jobs[0]["id"]), stack.job(last)
        if tail["queue_position"] is not None:
            positions.add(tail["queue_position"])
        if first["status"] == "running":
            progresses.append(first["progress"])
        if tail["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.2)
    assert stack.job(last)["status"] == "succeeded"
    assert max(positions) >= 2 and min(positions) == 1, positions
    assert len(set(progresses)) >= 2 and progresses == sorted(progresses), progresses


def test_cancel_queued_and_running_jobs(stack: Stack) -> None:
    spacing = (2.0, 2.0, 2.5)
    version_id = _random_unet(stack, "cancel-unet", ["liver"], spacing)
    scan_ids = [_scan(stack, f"cancel-{i}", (160, 160, 96), spacing) for i in range(2)]
    running, queued = _preannotate(stack, model_version_id=version_id, scan_ids=scan_ids)
    stack.wait_job(running["id"], until=lambda j: j["status"] == "running" and j["progress"] > 6)
    cancelled = stack.client.post(f"/api/jobs/{queued['id']}/cancel", headers=stack.headers["lead"]).json()
    assert cancelled["status"] == "cancelled"
    asked = stack.client.post(f"/api/jobs/{running['id']}/cancel", headers=stack.headers["lead"]).json()
    assert asked["cancel_requested"] is True
    assert stack.wait_job(running["id"])["status"] == "cancelled"
    time.sleep(2)
    assert stack.job(queued["id"])["started_at"] is None
    assert _versions_of(stack, scan_ids[0]) == [] and _versions_of(stack, scan_ids[1]) == []
    again = stack.client.post(f"/api/jobs/{queued['id']}/cancel", headers=stack.headers["lead"])
    assert again.status_code == 409
    forbidden = stack.client.post(f"/api/jobs/{running['id']}/cancel", headers=stack.headers["annotator"])
    assert forbidden.status_code == 403


def test_a_killed_worker_is_replaced_and_the_job_writes_exactly_one_version(stack: Stack) -> None:
    spacing = (2.0, 2.0, 2.5)
    version_id = _random_unet(stack, "kill-unet", ["liver"], spacing)
    scan_id = _scan(stack, "killed", (192, 192, 128), spacing)
    [job] = _preannotate(stack, model_version_id=version_id, scan_ids=[scan_id])
    running = stack.wait_job(job["id"], until=lambda j: j["status"] == "running" and j["progress"] > 10, timeout=120)
    victim = next(p for p in stack.workers if p.poll() is None)
    stack.kill_worker(victim, signal.SIGKILL)
    stack.start_worker("w2")
    done = stack.wait_job(job["id"], timeout=240)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert done["worker"] != running["worker"]
    versions = _versions_of(stack, scan_id)
    assert len(versions) == 1 and versions[0].author_model_version_id == version_id
    with stack.factory() as db:
        assert db.scalar(select(func.count(Prediction.id)).where(Prediction.job_id == job["id"])) == 1


def test_faulty_jobs_fail_with_a_clear_error_and_no_version(stack: Stack) -> None:
    scan_id = _scan(stack, "faulty", (64, 64, 32), (5.0, 5.0, 8.0))
    missing = _model(stack, "no-weights", architecture="unet", structures=["liver"])
    with stack.factory() as db:
        version = ModelVersion(model_id=missing["id"], number=1, weights_digest="0" * 64, is_promoted=True)
        db.add(version)
        db.commit()
        missing_version = version.id
    [job] = _preannotate(stack, model_version_id=missing_version, scan_ids=[scan_id])
    failed = stack.wait_job(job["id"])
    assert failed["status"] == "failed" and "missing from the blob store" in failed["error"]
    # A structure the project's schema no longer knows.
    classical = _classical_version(stack)
    with stack.factory() as db:
        model = db.get(Model, db.get(ModelVersion, classical).model_id)  # type: ignore[union-attr]
        assert model is not None
        original = list(model.structures)
        model.structures = [*original, "kidneys"]
        db.commit()
    try:
        [job] = _preannotate(stack, model_version_id=classical, scan_ids=[scan_id])
        failed = stack.wait_job(job["id"])
        assert failed["status"] == "failed" and "kidneys" in failed["error"]
    finally:
        with stack.factory() as db:
            model = db.get(Model, db.get(ModelVersion, classical).model_id)  # type: ignore[union-attr]
            assert model is not None
            model.structures = original
            db.commit()
    # A scan too thin for 3D inference.
    thin = _scan(stack, "thin", (64, 64, 1), (5.0, 5.0, 5.0))
    [job] = _preannotate(stack, model_version_id=classical, scan_ids=[thin])
    failed = stack.wait_job(job["id"])
    assert failed["status"] == "failed" and "too thin" in failed["error"]
    # A job whose scan was deleted before a worker got to it.
    gone = _scan(stack, "gone", (64, 64, 32), (5.0, 5.0, 8.0))
    with stack.factory() as db:
        job_row = Job(
            project_id=stack.project.id,
            kind="preannotate",
            queue="gpu",
            scan_id=None,
            model_version_id=classical,
            params={},
        )
        db.add(job_row)
        db.commit()
        ghost = job_row.id
    queue.send(queue.TASK_PREANNOTATE, ghost, "gpu")
    failed = stack.wait_job(ghost)
    assert failed["status"] == "failed" and "deleted" in failed["error"]
    assert _versions_of(stack, scan_id) == [] and _versions_of(stack, thin) == [] and _versions_of(stack, gone) == []


def test_attention_from_two_models_ranks_scans(stack: Stack) -> None:
    spacing = (4.0, 4.0, 5.0)
    scan_id = _scan(stack, "attention", (80, 80, 48), spacing)
    classical = _classical_version(stack)
    unet = _random_unet(stack, "attention-unet", ["liver", "spleen"], spacing)
    jobs = [
        *_preannotate(stack, model_version_id=classical, scan_ids=[scan_id]),
        *_preannotate(stack, model_version_id=unet, scan_ids=[scan_id]),
    ]
    for job in jobs:
        assert stack.wait_job(job["id"])["status"] == "succeeded"
    response = stack.client.post(
        f"/api/projects/{stack.project.id}/attention",
        headers=stack.headers["lead"],
        json={"scan_ids": [scan_id], "model_version_ids": [classical, unet]},
    )
    assert response.status_code == 201, response.text
    done = stack.wait_job(response.json()[0]["id"])
    assert done["status"] == "succeeded", done
    assert set(done["result"]["structures"]) == {"liver", "spleen"}
    ranked = stack.client.get(f"/api/projects/{stack.project.id}/priorities", headers=stack.headers["viewer"]).json()
    assert ranked["total"] >= 1
    priorities = [item["priority"] for item in ranked["items"]]
    assert priorities == sorted(priorities, reverse=True)
    top = ranked["items"][0]
    overlay = stack.client.get(
        f"/api/scans/{top['scan_id']}/attention/{top['structure']}", headers=stack.headers["viewer"]
    )
    assert overlay.status_code == 200
    assert float(overlay.headers["x-priority"]) == pytest.approx(top["priority"], rel=1e-5)
    assert top["structure"] in _reads_of(stack, "attention", stack.headers["viewer"])
    one_model = stack.client.post(
        f"/api/projects/{stack.project.id}/attention",
        headers=stack.headers["lead"],
        json={"scan_ids": [scan_id], "model_version_ids": [classical]},
    )
    assert one_model.status_code == 422


def test_training_on_phantoms_beats_a_floor_and_a_worse_model_is_not_promoted(stack: Stack) -> None:
    from tests.factories import upload_masks

    spacing = (5.0, 5.0, 6.0)
    version_ids = []
    for seed in range(4):
        phantom = generate_phantom((64, 64, 40), spacing, seed=50 + seed)
        scan_id = _scan_from(stack, f"train-{seed}", phantom)
        masks = {name: phantom.masks[name] for name in ("liver", "spleen")}
        version_ids.append(upload_masks(stack.client, stack.headers["lead"], scan_id, masks, phantom.affine)["id"])
        _approve(stack, scan_id, version_ids[-1])  # training takes approved versions only
    model = _model(
        stack,
        "trainable",
        architecture="unet",
        structures=["liver", "spleen"],
        config={
            "channels": [8, 16, 32, 64],
            "training": {"patch_size": [32, 32, 32], "samples_per_volume": 8, "learning_rate": 0.005},
        },
        preprocessing={"target_spacing": list(spacing)},
        inference={"roi_size": [32, 32, 32], "overlap": 0.25},
    )
    url = f"/api/projects/{stack.project.id}/models/{model['id']}/train"
    first = stack.client.post(url, headers=stack.headers["lead"], json={"label_version_ids": version_ids, "epochs": 80})
    assert first.status_code == 201, first.text
    done = stack.wait_job(first.json()["id"], timeout=600)
    assert done["status"] == "succeeded", done
    heldout = done["result"]["heldout_new"]
    assert heldout["per_structure"]["liver"] > 0.6, heldout  # the stated floor
    new_id = done["result"]["model_version_id"]
    assert stack.client.post(f"/api/model-versions/{new_id}/promote", headers=stack.headers["lead"]).status_code == 200
    # One epoch from scratch cannot beat it on the same held-out scan: promotion is refused.
    worse = stack.client.post(
        url,
        headers=stack.headers["lead"],
        json={"label_version_ids": version_ids, "epochs": 1, "init": "scratch"},
    )
    done = stack.wait_job(worse.json()["id"], timeout=300)
    assert done["status"] == "succeeded", done
    assert done["result"]["heldout_new"]["mean_dice"] < done["result"]["heldout_previous"]["mean_dice"]
    assert done["result"]["promoted"] is False and "does not beat" in done["result"]["decision"]
    refused = stack.client.post(
        f"/api/model-versions/{done['result']['model_version_id']}/promote", headers=stack.headers["lead"]
    )
    assert refused.status_code == 409
    rounds = stack.client.get(f"/api/models/{model['id']}/rounds", headers=stack.headers["viewer"]).json()
    assert len(rounds) == 2 and rounds[1]["previous_model_version_id"] == new_id
    assert rounds[0]["train_versions"] == 3 and rounds[0]["heldout_versions"] == 1


def _approve(stack: Stack, scan_id: int, version_id: int) -> None:
    """Mark a scan approved the way the review workflow leaves it (the row set directly)."""
    from datetime import UTC, datetime

    from backend.models import ScanTask

    with stack.factory() as db:
        task = db.get(ScanTask, scan_id) or ScanTask(scan_id=scan_id, project_id=stack.project.id)
        task.state, task.approved_version_id, task.approved_at = "approved", version_id, datetime.now(UTC)
        db.add(task)
        db.commit()


def _scan_from(stack: Stack, case_id: str, phantom: Any) -> int:
    response = stack.client.post(
        f"/api/projects/{stack.project.id}/scans",
        headers=stack.headers["lead"],
        files={"file": (f"{case_id}.nii.gz", to_nifti_gz(phantom.volume, phantom.affine), "application/gzip")},
        data={"case_id": case_id},
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])
