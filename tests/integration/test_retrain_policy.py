"""Automatic retraining: the promotion policy of a model, training after N approvals, and auto-promotion."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.jobs import service as jobs
from backend.models import Job, ModelVersion, Project, Scan, ScanTask, TrainingRound
from backend.registry import service as registry
from tests.conftest import World
from tests.factories import small_phantom, upload_masks, upload_scan
from tests.integration.workflow_support import act, ok, submit_flow, task

NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str]]:
    """Record what would be sent to the broker instead of needing one."""
    sent: list[tuple[str, int, str]] = []
    from backend.core import queue

    def send(name: str, job_id: int, q: str, attempt: int = 0) -> str:
        sent.append((name, job_id, q))
        return "t"

    monkeypatch.setattr(queue, "send", send)
    return sent


def _model(client: TestClient, world: World, **body: Any) -> Any:
    return client.post(f"/api/projects/{world.project.id}/models", headers=world.headers["lead"], json=body)


def _approve(db: Session, scan_id: int, version_id: int, at: datetime) -> None:
    """Mark a scan approved the way the review workflow leaves it (the row set directly)."""
    scan = db.get(Scan, scan_id)
    assert scan is not None
    task = db.get(ScanTask, scan_id)
    if task is None:
        task = ScanTask(scan_id=scan_id, project_id=scan.project_id)
        db.add(task)
    task.state = "approved"
    task.approved_version_id = version_id
    task.approved_at = at
    db.flush()


@pytest.fixture
def labelled(client: TestClient, world: World) -> list[tuple[int, int]]:
    """Four scans, each with a version holding liver and spleen (the last one without spleen): (scan, version)."""
    out = []
    for i in range(4):
        phantom = small_phantom(seed=i, lesion=False)
        scan = upload_scan(client, world.headers["lead"], world.project.id, phantom, f"r{i}")
        names = ("liver", "spleen") if i < 3 else ("liver",)
        masks = {name: phantom.masks[name] for name in names}
        version = upload_masks(client, world.headers["lead"], scan["id"], masks, phantom.affine)
        out.append((int(scan["id"]), int(version["id"])))
    return out


def test_promotion_policy_is_validated_on_create_and_update(client: TestClient, world: World) -> None:
    base = {"architecture": "unet", "structures": ["liver"]}
    auto = {"policy": "auto", "retrain_every_approvals": 3}
    created = _model(client, world, name="auto", config={"promotion": auto}, **base)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["promotion_policy"] == "auto" and body["retrain_every_approvals"] == 3
    assert body["config"]["promotion"] == auto
    plain = _model(client, world, name="plain", **base).json()
    assert plain["promotion_policy"] == "manual" and plain["config"]["promotion"]["policy"] == "manual"
    for bad, words in (
        ({"policy": "sometimes"}, "policy"),
        ({"policy": "auto"}, "retrain_every_approvals"),
        ({"policy": "auto", "retrain_every_approvals": 0}, "≥ 1"),
        ({"policy": "auto", "retrain_every_approvals": "5"}, "whole number"),
        ({"policy": "manual", "every": 2}, "unknown"),
    ):
        refused = _model(client, world, name="bad", config={"promotion": bad}, **base)
        assert refused.status_code == 422 and words in refused.json()["detail"], (bad, refused.text)
    disagree = _model(
        client,
        world,
        name="bad",
        config={"promotion": auto},
        promotion_policy="auto",
        retrain_every_approvals=5,
        **base,
    )
    assert disagree.status_code == 422 and "disagree" in disagree.json()["detail"]
    classical = _model(
        client, world, name="hu", architecture="classical", structures=["liver"], config={"promotion": auto}
    )
    assert classical.status_code == 422
    url = f"/api/models/{plain['id']}"
    changed = client.patch(url, headers=world.headers["lead"], json={"promotion": auto})
    assert changed.status_code == 200, changed.text
    assert changed.json()["promotion_policy"] == "auto" and changed.json()["config"]["promotion"] == auto
    bad_update = client.patch(url, headers=world.headers["lead"], json={"promotion": {"policy": "auto"}})
    assert bad_update.status_code == 422
    assert client.patch(url, headers=world.headers["annotator"], json={"promotion": auto}).status_code == 403
    assert client.get(url, headers=world.headers["viewer"]).json()["retrain_every_approvals"] == 3


def test_training_defaults_to_the_approved_versions(
    client: TestClient, world: World, db: Session, labelled: list[tuple[int, int]]
) -> None:
    model = _model(client, world, name="seg", architecture="unet", structures=["liver"]).json()
    url = f"/api/projects/{world.project.id}/models/{model['id']}/train"
    none = client.post(url, headers=world.headers["lead"], json={"epochs": 2})
    assert none.status_code == 422 and "no approved label versions" in none.json()["detail"]
    for scan_id, version_id in labelled[:3]:
        _approve(db, scan_id, version_id, NOW)
    launched = client.post(url, headers=world.headers["lead"], json={"epochs": 2})
    assert launched.status_code == 201, launched.text
    job = db.get(Job, launched.json()["id"])
    assert job is not None
    assert job.params["label_version_ids"] == [v for _, v in labelled[:3]]
    assert job.params["versions"] == "approved" and job.params["epochs"] == 2
    explicit = client.post(
        url, headers=world.headers["lead"], json={"label_version_ids": [v for _, v in labelled[1:3]]}
    )
    assert explicit.status_code == 201
    assert db.get(Job, explicit.json()["id"]).params["versions"] == "given"  # type: ignore[union-attr]
    # Only approved versions train: the unapproved last one is refused, named.
    unapproved = client.post(
        url, headers=world.headers["lead"], json={"label_version_ids": [v for _, v in labelled[2:]]}
    )
    assert unapproved.status_code == 422 and str(labelled[3][1]) in unapproved.json()["detail"]


def test_on_scan_approved_launches_training_every_n_approvals(
    client: TestClient, world: World, db: Session, labelled: list[tuple[int, int]]
) -> None:
    config = {"promotion": {"policy": "auto", "retrain_every_approvals": 2}, "training": {"epochs": 7}}
    auto = _model(client, world, name="auto", architecture="unet", structures=["liver", "spleen"], config=config)
    assert auto.status_code == 201, auto.text
    manual = _model(client, world, name="manual", architecture="unet", structures=["liver"]).json()
    (s0, v0), (s1, v1), (s2, v2), (s3, v3) = labelled
    _approve(db, s0, v0, NOW)
    assert jobs.on_scan_approved(db, world.project.id) == []  # 1 of 2
    _approve(db, s1, v1, NOW + timedelta(seconds=1))
    [job] = jobs.on_scan_approved(db, world.project.id)
    assert job.kind == "train" and job.status == "queued" and job.created_by is None
    assert job.params["model_id"] == auto.json()["id"] and job.params["label_version_ids"] == [v0, v1]
    assert job.params["epochs"] == 7 and "2 approvals" in job.params["trigger"]
    # The manual model never trains by itself; a running training of the auto model is not stacked.
    assert all(j.params["model_id"] != manual["id"] for j in db.query(Job).filter(Job.kind == "train"))
    _approve(db, s2, v2, NOW + timedelta(seconds=2))
    assert jobs.on_scan_approved(db, world.project.id) == []
    # The round of that job is recorded: only approvals after the job's launch count again.
    job.status = "succeeded"
    db.add(TrainingRound(model_id=job.params["model_id"], job_id=job.id, train_versions=1, heldout_versions=1))
    db.flush()
    late = job.created_at + timedelta(seconds=5)
    db.get(ScanTask, s2).approved_at = late  # type: ignore[union-attr]
    db.flush()
    assert jobs.on_scan_approved(db, world.project.id) == []  # 1 new approval since the launch
    # The fourth version lacks spleen: it counts as an approval but is not trained on.
    _approve(db, s3, v3, late + timedelta(seconds=1))
    [second] = jobs.on_scan_approved(db, world.project.id)
    assert second.params["label_version_ids"] == [v0, v1, v2]
    assert second.model_version_id is None  # nothing promoted yet: trained from scratch, compared with nothing


def test_on_scan_approved_needs_two_trainable_versions(
    client: TestClient, world: World, db: Session, labelled: list[tuple[int, int]]
) -> None:
    config = {"promotion": {"policy": "auto", "retrain_every_approvals": 1}}
    assert _model(client, world, name="a", architecture="unet", structures=["liver"], config=config).status_code == 201
    scan_id, version_id = labelled[0]
    _approve(db, scan_id, version_id, NOW)
    assert jobs.on_scan_approved(db, world.project.id) == []  # one version cannot be split into train + held-out
    _approve(db, *labelled[1], NOW)
    assert len(jobs.on_scan_approved(db, world.project.id)) == 1


# --- the promotion decision of the training pipeline, run in this process against a committed database ---------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.integration.worker_stack import build_stack

    with build_stack(tmp_path_factory.mktemp("retrain")) as built:
        yield built


def _shipped_weights() -> tuple[bytes, dict[str, Any]]:
    import json

    from worker.models.phantom_model import DEFAULT_WEIGHTS

    if not DEFAULT_WEIGHTS.exists():
        pytest.skip("phantom weights not trained yet")
    return DEFAULT_WEIGHTS.read_bytes(), json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text("utf-8"))


@pytest.mark.slow
def test_training_promotes_only_under_the_auto_policy_and_on_a_heldout_win(stack: Any) -> None:
    from backend.imaging.phantom import generate_phantom
    from worker.pipelines import training

    weights, meta = _shipped_weights()
    structures = meta["structures"]
    spacing = tuple(meta["preprocessing"]["target_spacing"])
    lead = stack.headers["lead"]
    versions = []
    for seed in range(4):
        phantom = generate_phantom((96, 96, 64), spacing, seed=300 + seed, lesion=False)
        scan = upload_scan(stack.client, lead, stack.project.id, phantom, f"auto-{seed}")
        masks = {name: phantom.masks[name] for name in structures}
        versions.append((scan["id"], upload_masks(stack.client, lead, scan["id"], masks, phantom.affine)["id"]))

    def create(name: str, promotion: dict[str, Any]) -> int:
        body = {
            "name": name,
            "architecture": meta["architecture"],
            "structures": structures,
            "config": {
                **meta["config"],
                "promotion": promotion,
                "training": {"patch_size": [32, 32, 32], "samples_per_volume": 2, "epochs": 1},
            },
            "preprocessing": meta["preprocessing"],
            "inference": {"roi_size": [64, 64, 64], "overlap": 0.25},
        }
        response = stack.client.post(f"/api/projects/{stack.project.id}/models", headers=lead, json=body)
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    auto_id = create("auto", {"policy": "auto", "retrain_every_approvals": 4})
    manual_id = create("manual", {"policy": "manual", "retrain_every_approvals": None})
    with stack.factory() as db:
        for scan_id, version_id in versions:
            _approve(db, scan_id, version_id, datetime.now(UTC))
        [auto_job] = jobs.on_scan_approved(db, stack.project.id)
        manual_job = jobs.launch_training(
            db,
            db.get(Project, stack.project.id),
            None,
            model=registry.get_model(db, manual_id),
            label_version_ids=None,
            epochs=1,
            heldout_fraction=0.25,
        )
        db.commit()
        auto_job_id, manual_job_id = auto_job.id, manual_job.id

    def run(job_id: int) -> dict[str, Any]:
        training.run(job_id)
        with stack.factory() as db:
            job = db.get(Job, job_id)
            assert job is not None and job.status == "succeeded", (job.status, job.error) if job else None
            return dict(job.result)

    # Nothing promoted yet: the auto model's first version is promoted, the manual one's is not.
    first = run(auto_job_id)
    assert first["promoted"] is True and first["decision"].startswith("promoted automatically"), first
    manual = run(manual_job_id)
    assert manual["promoted"] is False and "manual policy" in manual["decision"], manual
    with stack.factory() as db:
        assert registry.promoted_version(db, registry.get_model(db, auto_id)).id == first["model_version_id"]  # type: ignore[union-attr]
        assert registry.promoted_version(db, registry.get_model(db, manual_id)) is None
        # A strong promoted version (the shipped phantom model): one epoch from scratch cannot beat it.
        model = registry.get_model(db, auto_id)
        strong = registry.add_version(db, stack.blobs, model, weights=weights)
        registry.promote(db, strong, None, checked=False)
        db.flush()
        round_ = db.query(TrainingRound).filter(TrainingRound.job_id == auto_job_id).one()
        assert round_.promoted is True and round_.decision == first["decision"]
        db.commit()
        strong_id = strong.id
        retrain = jobs.launch_training(
            db,
            db.get(Project, stack.project.id),
            None,
            model=model,
            label_version_ids=None,
            epochs=1,
            heldout_fraction=0.25,
            init="scratch",
        )
        db.commit()
        retrain_id = retrain.id
    worse = run(retrain_id)
    assert worse["heldout_new"]["mean_dice"] < worse["heldout_previous"]["mean_dice"]
    assert worse["promoted"] is False and "does not beat" in worse["decision"], worse
    with stack.factory() as db:
        assert registry.promoted_version(db, registry.get_model(db, auto_id)).id == strong_id  # type: ignore[union-attr]
        assert db.get(ModelVersion, worse["model_version_id"]).is_promoted is False


def test_approving_through_the_review_flow_launches_the_auto_retraining(
    client: TestClient, world: World, db: Session, labelled: list[tuple[int, int]], no_broker: list[Any]
) -> None:
    """The approve path of the workflow (review endpoint) asks the policy, commits the job, then sends it."""
    auto = {"policy": "auto", "retrain_every_approvals": 2}
    made = _model(
        client, world, name="flow", architecture="unet", structures=["liver", "spleen"], config={"promotion": auto}
    )
    assert made.status_code == 201, made.text
    reviewer = world.headers["reviewer"]

    def approve(scan_id: int) -> None:
        version = submit_flow(client, world, scan_id)
        ok(act(client, reviewer, scan_id, "start_review"))
        body = {"version_id": version, "decision": "approve", "message": "looks right"}
        ok(client.post(f"/api/scans/{scan_id}/reviews", headers=reviewer, json=body), 201)
        assert task(client, reviewer, scan_id)["state"] == "approved"

    def trainings() -> list[Job]:
        return list(db.scalars(select(Job).where(Job.kind == "train", Job.project_id == world.project.id)))

    approve(labelled[0][0])
    assert trainings() == [] and no_broker == []
    approve(labelled[1][0])
    [job] = trainings()
    assert job.params["model_id"] == made.json()["id"]
    assert no_broker == [("maskloop.train", job.id, job.queue)]
