"""Model registry and job launching through the API (no worker needed: jobs stay queued)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend.core.config import Settings
from backend.models import Job, ModelVersion, TrainingRound
from backend.registry import service as registry
from tests.conftest import World
from tests.factories import small_phantom, upload_masks, upload_scan


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str]]:
    """Record what would be sent to the broker instead of needing one (the worker tests use a real one)."""
    sent: list[tuple[str, int, str]] = []
    from backend.core import queue

    monkeypatch.setattr(queue, "send", lambda name, job_id, q, attempt=0: sent.append((name, job_id, q)) or "t")
    return sent


@pytest.fixture(autouse=True)
def no_wait(settings: Settings) -> None:
    """No worker checks uploaded weights here: an upload answers 'pending' at once."""
    settings.weights_check_wait_s = 0.0


def _checked_upload(client: TestClient, world: World, db: Session, model_id: int, content: bytes = b"w") -> dict:
    """Upload weights and record the check's verdict 'valid', as the worker writes it (the worker tests check real
    weights): the version can then be promoted."""
    response = client.post(
        f"/api/models/{model_id}/versions",
        headers=world.headers["lead"],
        files={"weights": ("w.pt", content, "application/octet-stream")},
    )
    assert response.status_code == 201 and response.json()["weights_status"] == "pending", response.text
    version = db.get(ModelVersion, response.json()["id"])
    assert version is not None
    registry.record_weights_check(db, version, valid=True, reason="checked", job_id=None, seconds=0.0)
    return {**response.json(), "weights_status": "valid"}


def _create(client: TestClient, world: World, **body: object) -> dict:
    response = client.post(f"/api/projects/{world.project.id}/models", headers=world.headers["lead"], json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_model_registration_validates_against_the_schema(client: TestClient, world: World) -> None:
    url = f"/api/projects/{world.project.id}/models"
    lead = world.headers["lead"]
    bad = client.post(url, headers=lead, json={"name": "m", "architecture": "unet", "structures": ["kidneys"]})
    assert bad.status_code == 422 and "kidneys" in bad.json()["detail"]
    bad = client.post(url, headers=lead, json={"name": "m", "architecture": "resnet", "structures": ["liver"]})
    assert bad.status_code == 422 and "architecture" in bad.json()["detail"]
    bad = client.post(
        url,
        headers=lead,
        json={"name": "m", "architecture": "unet", "structures": ["liver"], "inference": {"overlap": 0.1}},
    )
    assert bad.status_code == 422 and "0.25" in bad.json()["detail"]
    for inference, word in (
        ({"roi_size": [96, 96]}, "roi_size"),
        ({"roi_size": [96, 0, 96]}, "roi_size"),
        ({"overlap": "half"}, "overlap"),
        ({"mode": "median"}, "mode"),
        ({"sw_batch_size": 0}, "sw_batch_size"),
        ({"device": "tpu"}, "device"),
        ({"amp": "yes"}, "amp"),
        ({"windows": 3}, "unknown"),
    ):
        body = {"name": "m", "architecture": "unet", "structures": ["liver"], "inference": inference}
        bad = client.post(url, headers=lead, json=body)
        assert bad.status_code == 422 and word in bad.json()["detail"], inference
    on_gpu = {"name": "g", "architecture": "unet", "structures": ["liver"], "inference": {"device": "cuda:1"}}
    created = client.post(url, headers=lead, json=on_gpu)
    assert created.status_code == 201 and created.json()["inference"]["device"] == "cuda:1"
    model = _create(client, world, name="m", architecture="unet", structures=["liver", "ivc"])
    assert model["structures"] == ["liver", "postcava"]  # aliases resolve to schema names
    assert model["preprocessing"]["target_spacing"] == [1.5, 1.5, 1.5]
    assert model["inference"]["mode"] == "gaussian" and model["inference"]["overlap"] >= 0.25
    duplicate = client.post(url, headers=lead, json={"name": "m", "architecture": "unet", "structures": ["liver"]})
    assert duplicate.status_code == 409
    assert (
        client.post(
            url, headers=world.headers["annotator"], json={"name": "x", "architecture": "unet", "structures": ["liver"]}
        ).status_code
        == 403
    )


def test_weight_versions_are_hashed_and_promotion_needs_a_heldout_win(
    client: TestClient, world: World, db: Session, blobs: object
) -> None:
    model = _create(client, world, name="seg", architecture="unet", structures=["liver"])
    lead = world.headers["lead"]
    first = _checked_upload(client, world, db, model["id"], b"weights-one")
    assert first["number"] == 1 and len(first["weights_digest"]) == 64 and first["weights_bytes"] == 11
    assert client.post(f"/api/model-versions/{first['id']}/promote", headers=lead).status_code == 200
    second = _checked_upload(client, world, db, model["id"], b"weights-two")
    refused = client.post(f"/api/model-versions/{second['id']}/promote", headers=lead)
    assert refused.status_code == 409 and "held-out" in refused.json()["detail"]
    # A training round that compared both on one held-out set (of at least 5 scans) decides.
    for new, old, expected in ((0.60, 0.70, 409), (0.80, 0.70, 200)):
        db.query(TrainingRound).delete()
        db.add(
            TrainingRound(
                model_id=model["id"],
                new_model_version_id=second["id"],
                previous_model_version_id=first["id"],
                train_versions=15,
                heldout_versions=5,
                heldout_new={"mean_dice": new, "per_structure": {"liver": new}},
                heldout_previous={"mean_dice": old, "per_structure": {"liver": old}},
            )
        )
        db.flush()
        assert client.post(f"/api/model-versions/{second['id']}/promote", headers=lead).status_code == expected
    versions = client.get(f"/api/models/{model['id']}/versions", headers=world.headers["viewer"]).json()
    assert [v["is_promoted"] for v in versions] == [False, True]
    assert registry.promoted_version(db, registry.get_model(db, model["id"])).id == second["id"]  # type: ignore[union-attr]


def test_preannotate_targets_one_filtered_or_all_scans(
    client: TestClient, world: World, db: Session, no_broker: list[tuple[str, int, str]]
) -> None:
    lead = world.headers["lead"]
    ids = [
        upload_scan(client, lead, world.project.id, small_phantom(seed=i), f"c{i}", metadata={"site": s})["id"]
        for i, s in enumerate(["A", "B", "B"])
    ]
    model = _create(client, world, name="seg", architecture="unet", structures=["liver"])
    url = f"/api/projects/{world.project.id}/preannotate"
    no_version = client.post(url, headers=lead, json={"model": "seg", "all": True})
    assert no_version.status_code == 422 and "promoted" in no_version.json()["detail"]
    version = _checked_upload(client, world, db, model["id"])
    client.post(f"/api/model-versions/{version['id']}/promote", headers=lead)
    no_broker.clear()  # the weights check's message
    one = client.post(url, headers=lead, json={"model": "seg", "scan_ids": [ids[0]]}).json()
    site_b = client.post(url, headers=lead, json={"model": "seg", "filter": {"site": "B"}}).json()
    everything = client.post(url, headers=lead, json={"model": "seg", "all": True}).json()
    assert [j["scan_id"] for j in one] == [ids[0]]
    assert sorted(j["scan_id"] for j in site_b) == sorted(ids[1:])
    assert sorted(j["scan_id"] for j in everything) == sorted(ids)
    assert all(j["status"] == "queued" and j["queue"] == "gpu" for j in everything)
    # Queue positions count the queued jobs ahead in the same queue.
    assert [j["queue_position"] for j in everything] == [4, 5, 6]
    assert len(no_broker) == 6 and all(name == "maskloop.preannotate" for name, _, _ in no_broker)
    ambiguous = client.post(url, headers=lead, json={"model": "seg", "all": True, "scan_ids": [ids[0]]})
    assert ambiguous.status_code == 422
    assert client.post(url, headers=world.headers["annotator"], json={"model": "seg", "all": True}).status_code == 403
    outsider = client.post(url, headers=world.headers["outsider"], json={"model": "seg", "all": True})
    assert outsider.status_code == 404
    cancel = client.post(f"/api/jobs/{one[0]['id']}/cancel", headers=lead).json()
    assert cancel["status"] == "cancelled"
    assert db.get(Job, everything[0]["id"]).status == "queued"  # type: ignore[union-attr]
    page = client.get(f"/api/projects/{world.project.id}/jobs?status=cancelled", headers=world.headers["viewer"]).json()
    assert page["total"] == 1


def test_training_request_checks_its_versions(client: TestClient, world: World) -> None:
    lead = world.headers["lead"]
    phantom = small_phantom(seed=2)
    scan = upload_scan(client, lead, world.project.id, phantom, "t1")
    version = upload_masks(client, lead, scan["id"], {"liver": phantom.masks["liver"]}, phantom.affine)
    model = _create(client, world, name="seg", architecture="unet", structures=["liver"])
    url = f"/api/projects/{world.project.id}/models/{model['id']}/train"
    one = client.post(url, headers=lead, json={"label_version_ids": [version["id"]]})
    assert one.status_code == 422
    second = upload_masks(
        client, lead, scan["id"], {"liver": phantom.masks["liver"]}, phantom.affine, base_version_id=version["id"]
    )
    same_scan = client.post(url, headers=lead, json={"label_version_ids": [version["id"], second["id"]]})
    assert same_scan.status_code == 422
    assert "are not approved" in same_scan.json()["detail"]  # training takes approved versions only
    classical = _create(client, world, name="hu", architecture="classical", structures=["liver"])
    url_classical = f"/api/projects/{world.project.id}/models/{classical['id']}/train"
    assert client.post(url_classical, headers=lead, json={"label_version_ids": [1, 2]}).status_code == 422


def test_attention_thresholds_are_project_settings(client: TestClient, world: World, db: Session) -> None:
    url = f"/api/projects/{world.project.id}/settings"
    changed = client.patch(url, headers=world.headers["lead"], json={"attention": {"std": 0.2, "entropy": 0.1}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["settings"]["attention"] == {"std": 0.2, "entropy": 0.1}
    from backend.jobs import service as jobs

    db.refresh(world.project)
    assert jobs.attention_thresholds(world.project) == {
        "std": 0.2,
        "entropy": 0.1,
        "erosion_iterations": 2,
        "dilation_iterations": 2,
    }
    assert client.patch(url, headers=world.headers["lead"], json={"attention": {"std": 2}}).status_code == 422
    assert client.patch(url, headers=world.headers["lead"], json={"colour": "red"}).status_code == 422
    assert client.patch(url, headers=world.headers["annotator"], json={"attention": {"std": 0.3}}).status_code == 403


def test_preannotation_skips_approved_scans_and_refuses_a_single_approved_one(
    client: TestClient, world: World, db: Session, no_broker: list[tuple[str, int, str]]
) -> None:
    from sqlalchemy import func, select

    from backend.models import ScanTask

    def job_count() -> int:
        return int(db.scalar(select(func.count(Job.id))) or 0)

    lead = world.headers["lead"]
    done, todo = (
        upload_scan(client, lead, world.project.id, small_phantom(seed=i), case)["id"]
        for i, case in enumerate(["approved-case", "open-case"])
    )
    task = db.get(ScanTask, done) or ScanTask(scan_id=done, project_id=world.project.id)
    task.state = "approved"
    db.add(task)
    db.flush()
    model = _create(client, world, name="seg", architecture="unet", structures=["liver"])
    version = _checked_upload(client, world, db, model["id"])
    client.post(f"/api/model-versions/{version['id']}/promote", headers=lead)
    no_broker.clear()  # the weights check's message
    url = f"/api/projects/{world.project.id}/preannotate"

    # The whole project: one job (the open scan), the approved scan skipped and counted in the headers.
    launched = client.post(url, headers=lead, json={"model": "seg", "all": True})
    assert launched.status_code == 201, launched.text
    assert [j["scan_id"] for j in launched.json()] == [todo]
    assert launched.headers["X-Skipped-Approved"] == "1"
    assert launched.headers["X-Skipped-Approved-Scans"] == str(done)
    assert [(name, q) for name, _, q in no_broker] == [("maskloop.preannotate", "gpu")]
    explicit = client.post(url, headers=lead, json={"model": "seg", "scan_ids": [done, todo]})
    assert [j["scan_id"] for j in explicit.json()] == [todo] and explicit.headers["X-Skipped-Approved"] == "1"
    nothing_skipped = client.post(url, headers=lead, json={"model": "seg", "scan_ids": [todo]})
    assert nothing_skipped.status_code == 201
    assert (
        nothing_skipped.headers["X-Skipped-Approved"] == "0"
        and nothing_skipped.headers["X-Skipped-Approved-Scans"] == ""
    )

    # The single scan asked for is approved: a clear 409 at once, and no job.
    jobs_before = job_count()
    refused = client.post(url, headers=lead, json={"model": "seg", "scan_ids": [done]})
    assert refused.status_code == 409, refused.text
    body = refused.json()
    assert body["error"] == "scan_approved" and body["details"]["skipped_approved"] == [done]
    assert f"scan {done} (approved-case) is approved" in body["detail"]
    assert "reopen" in body["detail"] and f"/api/scans/{done}/transitions" in body["detail"]
    assert job_count() == jobs_before and len(no_broker) == 3

    # Reopened (no longer approved): it can be pre-annotated again.
    task.state = "annotating"
    db.flush()
    again = client.post(url, headers=lead, json={"model": "seg", "scan_ids": [done]})
    assert again.status_code == 201 and [j["scan_id"] for j in again.json()] == [done]
