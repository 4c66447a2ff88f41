"""The strict model loop without a worker: approved-only training, the promotion gate with per-structure margins,
rollback as a recorded decision, unchecked weights kept out, approved scans out of the ranking, the AI-vs-final
Dice written at approval, and the CLI doors (`register-model`, `promote`, `attention`, `train --versions ""`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from backend import cli
from backend.core.blobstore import LocalBlobStore
from backend.core.config import Settings
from backend.core.errors import InvalidInput
from backend.flows import demo
from backend.jobs import service as jobs
from backend.labels import service as labels
from backend.models import ApprovalDice, AttentionMap, Job, Model, ModelVersion, Scan, ScanTask, TrainingRound
from backend.registry import service as registry
from tests.conftest import World
from tests.factories import small_phantom, upload_masks, upload_scan
from tests.integration.workflow_support import act, head, ok


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


@pytest.fixture(autouse=True)
def no_wait(settings: Settings) -> None:
    """No worker runs here: an upload does not wait for its weights check."""
    settings.weights_check_wait_s = 0.0


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, db: Session, blobs: LocalBlobStore, settings: Settings) -> Iterator[Any]:
    """Invoke a `maskloop` command in this process on the test transaction; returns (exit code, output)."""

    @contextmanager
    def scope() -> Iterator[Session]:
        yield db

    for module in (cli.jobs, cli.models):
        monkeypatch.setattr(module, "session_scope", scope)
        monkeypatch.setattr(module, "get_blob_store", lambda: blobs)
    monkeypatch.setattr(cli.models, "get_settings", lambda: settings)

    def invoke(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli.app, list(args))
        return result.exit_code, result.output

    yield invoke


def _create(client: TestClient, world: World, **body: Any) -> dict[str, Any]:
    response = client.post(f"/api/projects/{world.project.id}/models", headers=world.headers["lead"], json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _approve(db: Session, scan_id: int, version_id: int) -> None:
    """Mark a scan approved the way the review workflow leaves it (the row set directly)."""
    scan = db.get(Scan, scan_id)
    assert scan is not None
    task = db.get(ScanTask, scan_id) or ScanTask(scan_id=scan_id, project_id=scan.project_id)
    task.state, task.approved_version_id, task.approved_at = "approved", version_id, datetime.now(UTC)
    db.add(task)
    db.flush()


def _labelled(client: TestClient, world: World, count: int) -> list[tuple[int, int]]:
    out = []
    for i in range(count):
        phantom = small_phantom(seed=i, lesion=False)
        scan = upload_scan(client, world.headers["lead"], world.project.id, phantom, f"loop-{i}")
        masks = {"liver": phantom.masks["liver"], "spleen": phantom.masks["spleen"]}
        version = upload_masks(client, world.headers["lead"], scan["id"], masks, phantom.affine)
        out.append((int(scan["id"]), int(version["id"])))
    return out


def test_training_takes_only_approved_versions_and_an_empty_selection_is_refused(
    client: TestClient, world: World, db: Session, run_cli: Any
) -> None:
    (s0, v0), (s1, v1), (_s2, v2) = _labelled(client, world, 3)
    model = _create(client, world, name="seg", architecture="unet", structures=["liver"])
    url = f"/api/projects/{world.project.id}/models/{model['id']}/train"
    lead = world.headers["lead"]
    refused = client.post(url, headers=lead, json={"label_version_ids": [v0, v1]})
    assert refused.status_code == 422, refused.text
    assert f"{v0}, {v1}" in refused.json()["detail"] and "not approved" in refused.json()["detail"]
    assert refused.json()["details"]["not_approved"] == [v0, v1]
    _approve(db, s0, v0)
    _approve(db, s1, v1)
    mixed = client.post(url, headers=lead, json={"label_version_ids": [v0, v1, v2]})
    assert mixed.status_code == 422 and mixed.json()["details"]["not_approved"] == [v2]
    assert f"label version {v2} is not approved" in mixed.json()["detail"]
    assert client.post(url, headers=lead, json={"label_version_ids": []}).status_code == 422
    launched = client.post(url, headers=lead, json={"label_version_ids": [v0, v1], "epochs": 1})
    assert launched.status_code == 201, launched.text
    default = client.post(url, headers=lead, json={"epochs": 1})
    assert default.status_code == 201 and db.get(Job, default.json()["id"]).params["label_version_ids"] == [v0, v1]  # type: ignore[union-attr]
    # The service and the CLI: an empty selection is an error, not "all".
    with pytest.raises(InvalidInput, match="empty"):
        jobs.launch_training(
            db,
            world.project,
            None,
            model=registry.get_model(db, model["id"]),
            label_version_ids=[],
            epochs=1,
            heldout_fraction=0.5,
        )
    code, output = run_cli("train", "--project", "demo", "--model", "seg", "--versions", "", "--as", "lead@example.org")
    assert code == 2 and "empty" in output, output


def _two_versions(db: Session, blobs: LocalBlobStore, world: World, structures: list[str]) -> tuple[Model, list[int]]:
    """A UNet model with two versions (the first promoted), registered as this platform's own weights."""
    model = registry.create_model(db, world.project.id, name="gate", architecture="unet", structures=structures)
    first = registry.add_version(db, blobs, model, weights=b"first")
    registry.promote(db, first, None, checked=False)
    second = registry.add_version(db, blobs, model, weights=b"second")
    db.flush()
    return model, [first.id, second.id]


def _round(db: Session, model: Model, ids: list[int], n: int, old: dict[str, float], new: dict[str, float]) -> None:
    db.query(TrainingRound).delete()
    db.add(
        TrainingRound(
            model_id=model.id,
            new_model_version_id=ids[1],
            previous_model_version_id=ids[0],
            train_versions=10,
            heldout_versions=n,
            heldout_new={"mean_dice": float(np.mean(list(new.values()))), "per_structure": new},
            heldout_previous={"mean_dice": float(np.mean(list(old.values()))), "per_structure": old},
        )
    )
    db.flush()


def test_promotion_gate_needs_enough_heldout_scans_no_structure_regression_and_a_rising_mean(
    client: TestClient, world: World, db: Session, blobs: LocalBlobStore
) -> None:
    model, ids = _two_versions(db, blobs, world, ["liver", "postcava", "spleen"])
    lead = world.headers["lead"]
    promote = f"/api/model-versions/{ids[1]}/promote"
    old = {"liver": 0.80, "postcava": 0.912, "spleen": 0.80}
    # One held-out scan proves nothing, however good it looks.
    _round(db, model, ids, 1, old, {"liver": 0.95, "postcava": 0.93, "spleen": 0.90})
    small = client.post(promote, headers=lead)
    assert small.status_code == 409 and "held-out set has 1 scan" in small.json()["detail"]
    assert "at least 5" in small.json()["detail"]
    # The mean rises, but the postcava loses 0.062: refused, naming it, with the gate in the details.
    _round(db, model, ids, 6, old, {"liver": 0.95, "postcava": 0.850, "spleen": 0.90})
    regressed = client.post(promote, headers=lead)
    assert regressed.status_code == 409, regressed.text
    assert "postcava lost 0.062 Dice (0.912 → 0.850)" in regressed.json()["detail"]
    gate = regressed.json()["details"]["gate"]
    assert gate["passed"] is False and [r["ok"] for r in gate["structures"]] == [True, False, True]
    # Within the margin everywhere, but the mean does not rise.
    _round(db, model, ids, 6, old, {"liver": 0.80, "postcava": 0.90, "spleen": 0.80})
    flat = client.post(promote, headers=lead)
    assert flat.status_code == 409 and "does not beat" in flat.json()["detail"]
    # A project may widen the margin; then the same candidate passes, and the decision lists each structure.
    settings_url = f"/api/projects/{world.project.id}/settings"
    for bad in ({"min_heldout_scans": 0}, {"max_structure_drop": 2}, {"margin": 0.1}, [1]):
        assert client.patch(settings_url, headers=lead, json={"promotion": bad}).status_code == 422, bad
    widened = client.patch(settings_url, headers=lead, json={"promotion": {"max_structure_drop": 0.1}})
    assert widened.status_code == 200 and widened.json()["settings"]["promotion"] == {"max_structure_drop": 0.1}
    _round(db, model, ids, 6, old, {"liver": 0.95, "postcava": 0.850, "spleen": 0.90})
    passed = client.post(promote, headers=lead, json={"reason": "better liver"})
    assert passed.status_code == 200 and passed.json()["is_promoted"] is True, passed.text
    decisions = client.get(f"/api/models/{model.id}/decisions", headers=world.headers["viewer"]).json()
    last = decisions[-1]
    assert last["kind"] == "promote" and last["from_version_id"] == ids[0] and last["to_version_id"] == ids[1]
    assert last["reason"] == "better liver" and last["actor_user_id"] == world.users["lead"].id
    by_name = {row["structure"]: row for row in last["gate"]["structures"]}
    assert by_name["postcava"]["previous"] == pytest.approx(0.912) and by_name["postcava"]["new"] == pytest.approx(0.85)
    assert last["gate"]["heldout_scans"] == 6 and last["gate"]["max_structure_drop"] == 0.1


def test_a_lead_rolls_back_to_an_earlier_version_with_a_reason(
    client: TestClient, world: World, db: Session, blobs: LocalBlobStore, run_cli: Any
) -> None:
    model, ids = _two_versions(db, blobs, world, ["liver"])
    registry.promote(db, db.get(ModelVersion, ids[1]), None, checked=False)  # type: ignore[arg-type]
    lead = world.headers["lead"]
    again = client.post(f"/api/model-versions/{ids[0]}/promote", headers=lead)
    assert again.status_code == 409 and "roll back" in again.json()["detail"]
    url = f"/api/model-versions/{ids[0]}/rollback"
    assert client.post(url, headers=lead, json={}).status_code == 422
    assert client.post(url, headers=lead, json={"reason": "   "}).status_code == 422
    assert client.post(url, headers=world.headers["annotator"], json={"reason": "x"}).status_code == 403
    rolled = client.post(url, headers=lead, json={"reason": "v2 misses small livers"})
    assert rolled.status_code == 200 and rolled.json()["is_promoted"] is True, rolled.text
    newer = client.post(f"/api/model-versions/{ids[1]}/rollback", headers=lead, json={"reason": "back"})
    assert newer.status_code == 422 and "newer" in newer.json()["detail"]
    assert client.post(url, headers=lead, json={"reason": "twice"}).status_code == 409
    last = client.get(f"/api/models/{model.id}/decisions", headers=lead).json()[-1]
    assert (last["kind"], last["from_version_id"], last["to_version_id"]) == ("rollback", ids[1], ids[0])
    assert last["reason"] == "v2 misses small livers"
    # The CLI: promote is gated, --rollback-to needs a reason and records it.
    assert (
        run_cli("promote", "--project", "demo", "--model", "gate", "--version", "2", "--as", "lead@example.org")[0] == 2
    )
    code, output = run_cli(
        "promote", "--project", "demo", "--model", "gate", "--rollback-to", "1", "--as", "lead@example.org"
    )
    assert code == 2 and "reason" in output
    registry.promote(db, db.get(ModelVersion, ids[1]), None, checked=False)  # type: ignore[arg-type]
    code, output = run_cli(
        "promote",
        "--project",
        "demo",
        "--model",
        "gate",
        "--rollback-to",
        "1",
        "--reason",
        "cli",
        "--as",
        "lead@example.org",
    )
    assert code == 0 and "rollback" in output, output
    assert registry.promoted_version(db, model).id == ids[0]  # type: ignore[union-attr]


def test_uploaded_weights_wait_for_their_check_and_are_neither_promoted_nor_used_before(
    client: TestClient, world: World, db: Session, no_broker: list[tuple[str, int, str]], settings: Settings
) -> None:
    model = _create(client, world, name="seg", architecture="unet", structures=["liver"])
    lead = world.headers["lead"]
    upload = client.post(
        f"/api/models/{model['id']}/versions", headers=lead, files={"weights": ("w.pt", b"\x00" * 30, "x/y")}
    )
    assert upload.status_code == 201, upload.text
    version = upload.json()
    assert version["weights_status"] == "pending"
    job = db.get(Job, version["weights_check"]["job_id"])
    assert job is not None and job.kind == "check_weights" and job.queue == "cpu"
    assert job.model_version_id == version["id"]
    assert ("maskloop.check_weights", job.id, "cpu") in no_broker
    pending = client.post(f"/api/model-versions/{version['id']}/promote", headers=lead)
    assert pending.status_code == 409 and "still being checked" in pending.json()["detail"]
    preannotate = client.post(
        f"/api/projects/{world.project.id}/preannotate",
        headers=lead,
        json={"model_version_id": version["id"], "all": True},
    )
    assert preannotate.status_code == 409, preannotate.text
    # The upload waits for its check; no worker takes it, so it stops after the claim wait and says 'pending'.
    settings.weights_check_wait_s, settings.weights_check_claim_wait_s = 10.0, 0.3
    started = datetime.now(UTC)
    second = client.post(f"/api/models/{model['id']}/versions", headers=lead, files={"weights": ("w.pt", b"x", "x/y")})
    assert second.status_code == 201 and second.json()["weights_status"] == "pending"
    assert (datetime.now(UTC) - started).total_seconds() < 5
    # The worker's verdict (written here as the check job writes it): refused weights answer 422 with the reason.
    row = db.get(ModelVersion, version["id"])
    assert row is not None
    registry.record_weights_check(
        db, row, valid=False, reason="not a torch state_dict file", job_id=job.id, seconds=0.1
    )
    refused = client.post(f"/api/model-versions/{version['id']}/promote", headers=lead)
    assert refused.status_code == 422 and "not a torch state_dict file" in refused.json()["detail"]
    listed = client.get(f"/api/models/{model['id']}/versions", headers=world.headers["viewer"]).json()
    assert [v["weights_status"] for v in listed] == ["invalid", "pending"]


def test_approved_scans_leave_the_priority_ranking(client: TestClient, world: World, db: Session) -> None:
    lead = world.headers["lead"]
    scans = [upload_scan(client, lead, world.project.id, small_phantom(seed=i), f"rank-{i}")["id"] for i in range(2)]
    liver = next(s for s in world.project.label_schema.structures if s.name == "liver")
    for scan_id, priority in zip(scans, (2.0, 1.0), strict=True):
        db.add(
            AttentionMap(
                project_id=world.project.id,
                scan_id=scan_id,
                structure_id=liver.id,
                manifest_digest="0" * 64,
                attention_voxels=10,
                inconsistency_voxels=10,
                uncertainty_voxels=0,
                overlap_voxels=0,
                priority=priority,
                model_version_ids=[1, 2],
            )
        )
    db.flush()
    url = f"/api/projects/{world.project.id}/priorities"
    assert [i["scan_id"] for i in client.get(url, headers=lead).json()["items"]] == scans
    task = db.get(ScanTask, scans[0]) or ScanTask(scan_id=scans[0], project_id=world.project.id)
    task.state = "approved"
    db.add(task)
    db.flush()
    page = client.get(url, headers=lead).json()
    assert [i["scan_id"] for i in page["items"]] == [scans[1]] and page["total"] == 1
    ranked = client.get(f"{url}/scans", headers=lead).json()
    assert [r["scan_id"] for r in ranked] == [scans[1]]


def _model_draft(
    db: Session, blobs: LocalBlobStore, scan_id: int, model_version: ModelVersion, masks: dict[str, np.ndarray]
) -> int:
    """A model's label version on the scan's head, as a pre-annotation job writes it (with its prediction row)."""
    scan = db.get(Scan, scan_id)
    assert scan is not None
    version = labels.create_version(
        db,
        blobs,
        scan,
        author=labels.Author(user_id=None, model_version_id=model_version.id),
        kind="model",
        base_version_id=scan.head_version_id,
        masks=masks,
    )
    job = jobs.create_job(
        db,
        project_id=scan.project_id,
        kind="preannotate",
        created_by=None,
        scan_id=scan.id,
        model_version_id=model_version.id,
    )
    registry.record_prediction(
        db, job_id=job.id, scan=scan, model_version=model_version, label_version=version, maps={n: {} for n in masks}
    )
    return int(version.id)


def test_approval_records_ai_vs_final_dice_for_the_predicted_structures_only(
    client: TestClient, world: World, db: Session, blobs: LocalBlobStore
) -> None:
    phantom = small_phantom(seed=5, lesion=False)
    lead = world.headers["lead"]
    scan_id = int(upload_scan(client, lead, world.project.id, phantom, "ai-final")["id"])
    truth = {"liver": phantom.masks["liver"], "spleen": phantom.masks["spleen"]}
    upload_masks(client, lead, scan_id, truth, phantom.affine, kind="import")
    model = registry.create_model(db, world.project.id, name="drafter", architecture="unet", structures=["liver"])
    version = registry.add_version(db, blobs, model, weights=b"drafter")
    registry.promote(db, version, None, checked=False)
    draft_liver = phantom.masks["liver"].copy()
    middle = int(np.median(np.nonzero(draft_liver)[0]))
    draft_liver[:middle] = False  # about half the liver missed
    draft_id = _model_draft(db, blobs, scan_id, version, {"liver": draft_liver})
    draft = labels.get_version(db, draft_id)
    # The draft carries the spleen it inherited from the import, but it predicted only the liver.
    assert {e.structure_id for e in draft.structures if e.status == "present"} >= {
        s.id for s in world.project.label_schema.structures if s.name in ("liver", "spleen")
    }
    assert registry.predicted_structures(db, draft) == ["liver"]
    # A `model` version uploaded by a service account has no prediction: its model's structures count.
    uploaded = registry.create_model(
        db, world.project.id, name="uploaded", architecture="classical", structures=["spleen"]
    )
    uploaded_version = registry.add_version(db, blobs, uploaded, weights=None)
    scan = db.get(Scan, scan_id)
    assert scan is not None
    spleen_draft = labels.create_version(
        db,
        blobs,
        scan,
        author=labels.Author(user_id=None, model_version_id=uploaded_version.id),
        kind="model",
        base_version_id=scan.head_version_id,
        masks={"spleen": phantom.masks["spleen"]},
    )
    assert registry.predicted_structures(db, spleen_draft) == ["spleen"]
    db.flush()

    # The annotator restores the liver the model half missed, and submits.
    annotator = world.headers["annotator"]
    ok(act(client, annotator, scan_id, "start"))
    corrected = upload_masks(
        client,
        annotator,
        scan_id,
        {"liver": phantom.masks["liver"]},
        phantom.affine,
        head(client, world, scan_id),
        "human",
    )
    ok(act(client, annotator, scan_id, "submit"))
    submitted = int(corrected["id"])
    ok(act(client, world.headers["reviewer"], scan_id, "start_review"))
    review = client.post(
        f"/api/scans/{scan_id}/reviews",
        headers=world.headers["reviewer"],
        json={"version_id": head(client, world, scan_id), "decision": "approve"},
    )
    assert review.status_code == 201, review.text
    assert head(client, world, scan_id) == submitted
    rows = {(r.model_version_id, r.structure_id): r for r in db.scalars(select(ApprovalDice)).all()}
    ids = {s.name: s.id for s in world.project.label_schema.structures}
    assert set(rows) == {(version.id, ids["liver"]), (uploaded_version.id, ids["spleen"])}
    final = labels.get_version(db, submitted)
    expected = next(d.dice for d in labels.diff_versions(db, blobs, draft, final) if d.structure == "liver")
    assert expected is not None and 0.3 < expected < 0.9
    assert rows[(version.id, ids["liver"])].dice == pytest.approx(expected)
    assert rows[(uploaded_version.id, ids["spleen"])].dice == pytest.approx(1.0)
    # The dashboard's AI-vs-final chart fills at the approval, without a training round.
    rounds = client.get(f"/api/projects/{world.project.id}/dashboard/model-rounds", headers=lead).json()
    drafter = next(m for m in rounds["models"] if m["name"] == "drafter")
    assert drafter["rounds"] == [] and len(drafter["versions"]) == 1
    entry = drafter["versions"][0]
    assert entry["number"] == 1 and entry["scans"] == 1 and set(entry["ai_vs_final_dice"]) == {"liver"}
    assert entry["ai_vs_final_mean"] == pytest.approx(expected)


def test_qa_reports_missing_structures_only_where_the_project_expects_them(
    client: TestClient, world: World, db: Session
) -> None:
    lead = world.headers["lead"]
    phantom = small_phantom(seed=6, lesion=False)

    def missing_findings(scan_id: int) -> set[str]:
        findings = client.post(f"/api/scans/{scan_id}/qa", headers=lead)
        assert findings.status_code == 200, findings.text
        return {f["structure"] for f in findings.json() if f["rule"] == "structure_missing"}

    first = int(upload_scan(client, lead, world.project.id, phantom, "qa-1")["id"])
    upload_masks(client, lead, first, {"liver": phantom.masks["liver"]}, phantom.affine)
    # 27 PanTS structures are recorded missing in that import, but the project has labelled only the liver.
    assert missing_findings(first) == set()
    second = int(upload_scan(client, lead, world.project.id, phantom, "qa-2")["id"])
    both = {"liver": phantom.masks["liver"], "spleen": phantom.masks["spleen"]}
    upload_masks(client, lead, second, both, phantom.affine)
    assert missing_findings(first) == {"spleen"}  # the cohort has spleens; this case lacks one
    url = f"/api/projects/{world.project.id}/settings"
    chosen = client.patch(url, headers=lead, json={"workflow": {"qa": {"expected_structures": ["liver", "ivc"]}}})
    assert chosen.status_code == 200, chosen.text
    assert chosen.json()["settings"]["workflow"]["qa"]["expected_structures"] == ["liver", "postcava"]
    assert missing_findings(first) == {"postcava"}
    unknown = client.patch(url, headers=lead, json={"workflow": {"qa": {"expected_structures": ["kidneys"]}}})
    assert unknown.status_code == 422 and "kidneys" in unknown.json()["detail"]
    assert (
        client.patch(url, headers=lead, json={"workflow": {"qa": {"expected_structures": "liver"}}}).status_code == 422
    )
    reset = client.patch(url, headers=lead, json={"workflow": {"qa": {"expected_structures": None}}})
    assert reset.status_code == 200 and missing_findings(first) == {"spleen"}


def test_cli_registers_a_model_with_checked_weights_and_queues_attention(
    client: TestClient, world: World, db: Session, run_cli: Any, tmp_path: Path, no_broker: list[Any]
) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not checked yet")
    code, output = run_cli(
        "register-model",
        "--project",
        "demo",
        "--name",
        "cli-unet",
        "--architecture",
        "unet",
        "--structures",
        "liver,ivc",
        "--config",
        '{"channels": [8, 16]}',
        "--weights",
        str(weights),
        "--as",
        "lead@example.org",
    )
    assert code == 0, output
    assert "registered model 'cli-unet'" in output and "weights pending" in output
    model = registry.get_model_by_name(db, world.project.id, "cli-unet")
    assert model.structures == ["liver", "postcava"] and model.config["channels"] == [8, 16]
    [version] = registry.list_versions(db, model)
    assert version.weights_status == "pending" and version.provenance["file"] == "w.pt"
    assert run_cli("register-model", "--project", "demo", "--name", "x", "--as", "lead@example.org")[0] == 2
    bundled = run_cli("register-model", "--project", "demo", "--bundled", "phantom-unet", "--as", "lead@example.org")
    assert bundled[0] == 0, bundled[1]
    assert registry.promoted_version(db, registry.get_model_by_name(db, world.project.id, "phantom-unet")) is not None
    annotator = run_cli(
        "register-model", "--project", "demo", "--bundled", "phantom-unet", "--as", "annotator@example.org"
    )
    assert annotator[0] == 2

    scan_ids = [
        upload_scan(client, world.headers["lead"], world.project.id, small_phantom(seed=i), f"att-{i}")["id"]
        for i in range(2)
    ]
    code, output = run_cli("attention", "--project", "demo", "--all", "--as", "lead@example.org")
    assert code == 0 and "queued 2 attention jobs" in output, output
    queued = list(db.scalars(select(Job).where(Job.kind == "attention")))
    assert sorted(j.scan_id or 0 for j in queued) == sorted(scan_ids)
    assert run_cli("attention", "--project", "demo", "--all", "--versions", "1", "--as", "lead@example.org")[0] == 2
    # A case id picks its scan; an unknown one is refused by name, nothing queued.
    code, output = run_cli("attention", "--project", "demo", "--case", "att-1", "--as", "lead@example.org")
    assert code == 0 and "queued 1 attention jobs" in output, output
    code, output = run_cli(
        "attention", "--project", "demo", "--case", "att-1", "--case", "nope", "--as", "lead@example.org"
    )
    assert code == 2 and "unknown case ids" in output and "nope" in output, output
    assert len(list(db.scalars(select(Job).where(Job.kind == "attention")))) == 3
    # The demo queues the same after its pre-annotations.
    launched = demo.launch_demo_attention(db, world.project, world.users["lead"])
    assert sorted(j.scan_id or 0 for j in launched) == sorted(scan_ids) and all(j.queue == "cpu" for j in launched)
