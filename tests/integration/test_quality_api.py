"""Quality through the API on PostgreSQL: reader sets (blinding, agreement, adjudication, fusion) and QA findings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.auth import service as auth
from backend.core.blobstore import LocalBlobStore
from backend.core.config import Settings
from backend.core.errors import Conflict, InvalidInput, PermissionDenied
from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import write_pants_dataset
from backend.models import AuditEvent, Job, LabelVersion, QAFinding, ReaderSet, Scan, ScanTask, TaskTransition, User
from backend.projects import service as projects
from backend.quality import service as quality
from backend.scans import service as scans
from tests.conftest import PASSWORD, World
from tests.factories import post_patch, read_mask, small_phantom, upload_masks, upload_scan
from tests.integration.worker_stack import Stack, build_stack
from worker.pipelines import fuse as fuse_pipeline

LESION = "pancreatic_lesion"
BOX = np.ones((8, 8, 4), dtype=bool)  # 256 voxels painted far from the lesion, in the air of a corner
CORNER_A = (1, 1, 1)
CORNER_B = (1, 50, 1)


def _add_reader(db: Session, world: World, settings: Settings, name: str) -> tuple[int, dict[str, str]]:
    user = auth.create_user(db, f"{name}@example.org", PASSWORD, name.title())
    projects.set_membership(db, world.project.id, user, "annotator", world.users["platform_admin"])
    db.flush()
    return user.id, {"Authorization": f"Bearer {auth.issue_access_token(user, settings)[0]}"}


@pytest.fixture
def labelled(client: TestClient, world: World) -> dict[str, Any]:
    """A phantom scan (tumour, venous) with its ground truth imported as the head version."""
    phantom = small_phantom(seed=3)
    lead = world.headers["lead"]
    scan = upload_scan(
        client, lead, world.project.id, phantom, "case-q", metadata={"tumor?": "1", "ct phase": "Venous"}
    )
    version = upload_masks(client, lead, scan["id"], phantom.masks, phantom.affine)
    return {"scan": scan, "version": version, "phantom": phantom}


def _open_count(db: Session, scan_id: int) -> int:
    task = db.get(ScanTask, scan_id)
    assert task is not None
    db.refresh(task)
    return task.open_findings


def _reader_save(client: TestClient, headers: dict[str, str], scan_id: int, base: int, corner: tuple) -> int:
    response = post_patch(client, headers, scan_id, base, [(LESION, corner, BOX)], message="reader", branch=True)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


# ------------------------------------------------------------------------------------------------------ QA


def test_import_runs_qa_and_findings_can_be_resolved(
    client: TestClient, db: Session, world: World, labelled: dict[str, Any]
) -> None:
    scan_id, version_id = labelled["scan"]["id"], labelled["version"]["id"]
    findings = client.get(f"/api/scans/{scan_id}/findings", headers=world.headers["viewer"]).json()
    # The phantom has 17 of the 28 PanTS structures; by default the project expects only what it has labelled.
    assert not any(f["rule"] == "structure_missing" for f in findings)
    # A project that expects the whole PanTS set: the 11 never given are missing.
    names = [s.name for s in world.project.label_schema.structures]
    expect_all = {"workflow": {"qa": {"expected_structures": names}}}
    changed = client.patch(f"/api/projects/{world.project.id}/settings", headers=world.headers["lead"], json=expect_all)
    assert changed.status_code == 200, changed.text
    findings = client.post(f"/api/scans/{scan_id}/qa", headers=world.headers["lead"]).json()
    rules = {(f["rule"], f["structure"]) for f in findings}
    missing = {s for r, s in rules if r == "structure_missing"}
    assert len(missing) == 11 and "femur_left" in missing and "liver" not in missing
    assert all(f["version_id"] == version_id and f["status"] == "open" for f in findings)
    assert not any(r == "tumor_flag_without_lesion" for r, _ in rules)
    # The small phantom's lesion has 24 voxels (< 50): read from its chunks, cropped.
    small = next(f for f in findings if f["rule"] == "small_lesion")
    assert small["structure"] == LESION and sum(small["details"]["small_component_voxels"]) == 24
    assert not any(r in ("outside_parent", "phase_mismatch", "volume_out_of_range") for r, _ in rules)
    assert _open_count(db, scan_id) == len(findings)

    # An annotator may resolve but not dismiss; a reviewer may dismiss.
    first, second = findings[0]["id"], findings[1]["id"]
    response = client.patch(f"/api/findings/{first}", headers=world.headers["annotator"], json={"status": "dismissed"})
    assert response.status_code == 403
    response = client.patch(f"/api/findings/{first}", headers=world.headers["annotator"], json={"status": "resolved"})
    assert response.status_code == 200 and response.json()["status"] == "resolved"
    response = client.patch(f"/api/findings/{second}", headers=world.headers["reviewer"], json={"status": "dismissed"})
    assert response.status_code == 200
    assert _open_count(db, scan_id) == len(findings) - 2
    assert (
        client.patch(f"/api/findings/{first}", headers=world.headers["outsider"], json={"status": "open"}).status_code
        == 404
    )

    # A rerun is idempotent and does not raise closed findings again.
    rerun = client.post(f"/api/scans/{scan_id}/qa", headers=world.headers["annotator"])
    assert rerun.status_code == 200, rerun.text
    assert len(rerun.json()) == len(findings) - 2
    assert first not in {f["id"] for f in rerun.json()}
    assert _open_count(db, scan_id) == len(findings) - 2

    page = client.get(
        f"/api/projects/{world.project.id}/findings",
        headers=world.headers["lead"],
        params={"status": "open", "rule": "structure_missing"},
    ).json()
    assert page["total"] == len(missing) - sum(1 for f in findings[:2] if f["rule"] == "structure_missing")
    assert {f["rule"] for f in page["items"]} == {"structure_missing"}
    bad = client.get(f"/api/projects/{world.project.id}/findings", headers=world.headers["lead"], params={"rule": "x"})
    assert bad.status_code == 422


def test_tumor_flag_float_masks_and_supersession(
    client: TestClient, db: Session, world: World, labelled: dict[str, Any]
) -> None:
    phantom, scan_id = labelled["phantom"], labelled["scan"]["id"]
    lead = world.headers["lead"]
    # A re-import: lesion mask empty although tumor?=1, the liver stored as floats 0.9999, the head shifted.
    head = np.roll(phantom.masks["pancreas_head"], 6, axis=1)
    files = [
        ("files", ("pancreas_head.nii.gz", to_nifti_gz(head.astype(np.uint8), phantom.affine), "x")),
        ("files", (f"{LESION}.nii.gz", to_nifti_gz(np.zeros(phantom.volume.shape, np.uint8), phantom.affine), "x")),
        (
            "files",
            ("liver.nii.gz", to_nifti_gz(phantom.masks["liver"].astype(np.float32) * 0.9999, phantom.affine), "x"),
        ),
    ]
    data = {"kind": "import", "message": "reimport", "base_version_id": str(labelled["version"]["id"])}
    response = client.post(f"/api/scans/{scan_id}/versions", headers=lead, files=files, data=data)
    assert response.status_code == 201, response.text
    new_id = response.json()["id"]
    assert read_mask(client, lead, new_id, "liver").sum() == phantom.masks["liver"].sum()  # binarised > 0.5

    findings = client.get(f"/api/scans/{scan_id}/findings", headers=lead, params={"status": "open"}).json()
    assert {f["version_id"] for f in findings} == {new_id}  # the parent's open findings were superseded
    by_rule = {f["rule"]: f for f in findings}
    assert by_rule["tumor_flag_without_lesion"]["severity"] == "error"
    assert by_rule["non_binary_mask"]["structure"] == "liver"
    assert by_rule["non_binary_mask"]["details"]["off_binary_voxels"] == int(phantom.masks["liver"].sum())
    outside = int((head & ~phantom.masks["pancreas"]).sum())
    assert outside > 0
    assert by_rule["outside_parent"]["structure"] == "pancreas_head"
    assert by_rule["outside_parent"]["details"]["outside_voxels"] == outside
    old = db.scalars(select(QAFinding).where(QAFinding.version_id == labelled["version"]["id"])).all()
    assert old and all(f.status == "resolved" and f.details["superseded_by"] == new_id for f in old)

    # Rerunning QA later (no import values) keeps the import-only non-binary finding.
    rerun = client.post(f"/api/scans/{scan_id}/qa", headers=lead, json={"version_id": new_id}).json()
    assert "non_binary_mask" in {f["rule"] for f in rerun}
    assert _open_count(db, scan_id) == len(rerun)


def test_phase_mismatch_from_the_image(client: TestClient, world: World) -> None:
    phantom = small_phantom(seed=4)
    lead = world.headers["lead"]
    scan = upload_scan(client, lead, world.project.id, phantom, "case-nc", metadata={"ct phase": "Non-contrast"})
    upload_masks(client, lead, scan["id"], phantom.masks, phantom.affine)
    findings = client.get(f"/api/scans/{scan['id']}/findings", headers=lead, params={"rule": "phase_mismatch"}).json()
    assert len(findings) == 1 and findings[0]["structure"] == "aorta"
    expected = float(phantom.volume[phantom.masks["aorta"]].mean())
    assert findings[0]["details"]["aorta_mean_hu"] == pytest.approx(expected, abs=0.05)
    assert findings[0]["details"]["phase"] == "non-contrast"


def test_pants_import_records_defects(db: Session, blobs: LocalBlobStore, world: World, tmp_path: Path) -> None:
    root = tmp_path / "pants"
    write_pants_dataset(
        root,
        3,
        shape=(48, 48, 24),
        spacing=(7.5, 7.5, 10.8),
        seed=5,
        float_masks_cases={0},
        missing_structure={1: "spleen"},
        orientations={2: "LPS"},
    )
    scans.import_pants_dataset(db, blobs, world.project, world.users["lead"], root)
    found = {s.case_id: s for s in db.scalars(select(Scan).where(Scan.project_id == world.project.id))}
    names = quality.structure_names(db, world.project.id)

    def rules_of(case: str) -> set[tuple[str, str | None]]:
        rows = db.scalars(select(QAFinding).where(QAFinding.scan_id == found[case].id, QAFinding.status == "open"))
        return {(f.rule, names.get(f.structure_id) if f.structure_id else None) for f in rows}

    assert ("non_binary_mask", "liver") in rules_of("PanTS_00000001")
    assert not any(r == "non_binary_mask" for r, _ in rules_of("PanTS_00000002"))
    assert ("structure_missing", "spleen") in rules_of("PanTS_00000002")
    assert ("structure_missing", "spleen") not in rules_of("PanTS_00000001")
    assert found["PanTS_00000003"].orientation == "LPS"
    assert ("orientation_differs", None) in rules_of("PanTS_00000003")
    assert ("orientation_differs", None) not in rules_of("PanTS_00000001")
    assert _open_count(db, found["PanTS_00000002"].id) == len(rules_of("PanTS_00000002"))


# ------------------------------------------------------------------------------------------------------ readers


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A committed PostgreSQL database and the API, so the `fuse` job's cpu pipeline can run in this process."""
    with build_stack(tmp_path / "stack") as built:
        yield built


@pytest.fixture
def stack_labelled(stack: Stack) -> dict[str, Any]:
    """A phantom scan (tumour, venous) with its ground truth imported as the head version, on the stack."""
    phantom = small_phantom(seed=3)
    lead = stack.headers["lead"]
    scan = upload_scan(
        stack.client, lead, stack.project.id, phantom, "case-q", metadata={"tumor?": "1", "ct phase": "Venous"}
    )
    version = upload_masks(stack.client, lead, scan["id"], phantom.masks, phantom.affine)
    return {"scan": scan, "version": version, "phantom": phantom}


def _stack_reader(stack: Stack, name: str) -> tuple[int, dict[str, str]]:
    with stack.factory() as db:
        user = auth.create_user(db, f"{name}@example.org", PASSWORD, name.title())
        admin = db.scalar(select(User).where(User.email == "admin@example.org"))
        assert admin is not None
        projects.set_membership(db, stack.project.id, user, "annotator", admin)
        db.commit()
        return user.id, {"Authorization": f"Bearer {auth.issue_access_token(user, stack.settings)[0]}"}


def _stack_user_id(stack: Stack, role: str) -> int:
    with stack.factory() as db:
        user = db.scalar(select(User).where(User.email == f"{role}@example.org"))
        assert user is not None
        return user.id


def _queue_fusion(stack: Stack, set_id: int, method: str) -> dict[str, Any]:
    """POST fuse as the lead: 202 with the queued cpu job and the (not yet fused) set."""
    accepted = stack.client.post(
        f"/api/reader-sets/{set_id}/fuse", headers=stack.headers["lead"], json={"method": method}
    )
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    job = body["job"]
    assert (job["kind"], job["queue"], job["status"]) == ("fuse", "cpu", "queued")
    assert job["params"] == {"reader_set_id": set_id, "method": method}
    assert job["queue_position"] is not None and job["queue_position"] >= 1
    assert job["message"] == "waiting in the queue"  # sent to the broker as maskloop.fuse
    assert body["reader_set"]["id"] == set_id and body["reader_set"]["fusion_version_id"] is None
    assert body["reader_set"]["status"] in ("complete", "adjudication")
    assert body["reader_set"]["fusion_job"]["id"] == job["id"]
    return dict(job)


def _run_fusion(stack: Stack, job_id: int) -> dict[str, Any]:
    """Run the fuse job's pipeline in this process (as a cpu worker would) and return the finished job."""
    fuse_pipeline.run(job_id)
    job = stack.job(job_id)
    assert job["status"] == "succeeded", job
    assert job["progress"] == 100.0 and job["result"]["label_version_id"]
    return job


def test_reader_set_blinding_agreement_adjudication_and_majority_fusion(
    stack: Stack, stack_labelled: dict[str, Any]
) -> None:
    client, labelled = stack.client, stack_labelled
    scan_id, base = labelled["scan"]["id"], labelled["version"]["id"]
    other_id, other = _stack_reader(stack, "reader2")
    a_id, a = _stack_user_id(stack, "annotator"), stack.headers["annotator"]
    lead = stack.headers["lead"]
    url = f"/api/projects/{stack.project.id}/reader-sets"
    denied = client.post(url, headers=a, json={"scan_ids": [scan_id], "readers": [a_id, other_id]})
    assert denied.status_code == 403
    created = client.post(url, headers=lead, json={"scan_ids": [scan_id], "readers": [a_id, other_id]})
    assert created.status_code == 201, created.text
    set_id = created.json()[0]["id"]
    assert created.json()[0]["status"] == "open" and created.json()[0]["base_version_id"] == base
    assert created.json()[0]["fusion_job"] is None
    again = client.post(url, headers=lead, json={"scan_ids": [scan_id], "readers": [a_id, other_id]})
    assert again.status_code == 409

    version_a = _reader_save(client, a, scan_id, base, CORNER_A)
    version_b = _reader_save(client, other, scan_id, base, CORNER_B)
    # Blinding: reader A cannot see reader B's version (404 everywhere), nor list it; the lead can.
    assert client.get(f"/api/versions/{version_b}", headers=a).status_code == 404
    assert client.get(f"/api/versions/{version_b}/masks/liver", headers=a).status_code == 404
    assert client.get(f"/api/versions/{version_a}/diff", headers=a, params={"against": version_b}).status_code == 404
    assert client.get(f"/api/versions/{version_a}", headers=a).status_code == 200
    listed = {v["id"] for v in client.get(f"/api/scans/{scan_id}/versions", headers=a).json()}
    assert version_a in listed and version_b not in listed and base in listed
    assert client.get(f"/api/versions/{version_b}", headers=lead).status_code == 200

    # Submitting another reader's version is refused; A submits their own.
    wrong = client.post(f"/api/reader-sets/{set_id}/submit", headers=a, json={"version_id": version_b})
    assert wrong.status_code == 422
    assert (
        client.post(
            f"/api/reader-sets/{set_id}/submit", headers=stack.headers["viewer"], json={"version_id": base}
        ).status_code
        == 403
    )
    submitted = client.post(f"/api/reader-sets/{set_id}/submit", headers=a, json={"version_id": version_a})
    assert submitted.status_code == 200, submitted.text
    seen_by_a = {m["user_id"]: m for m in submitted.json()["members"]}
    assert seen_by_a[a_id]["version_id"] == version_a and seen_by_a[other_id]["version_id"] is None
    assert submitted.json()["agreement"] is None
    # Validation stays synchronous: a set still open is refused at once, and no job is queued.
    early = client.post(f"/api/reader-sets/{set_id}/fuse", headers=lead, json={"method": "majority"})
    assert early.status_code == 409 and "still open" in early.json()["detail"]
    with stack.factory() as db:
        assert db.scalar(select(func.count(Job.id)).where(Job.kind == "fuse")) == 0

    done = client.post(f"/api/reader-sets/{set_id}/submit", headers=other, json={"version_id": version_b})
    assert done.status_code == 200, done.text
    body = done.json()
    lesion = int(labelled["phantom"].masks[LESION].sum())
    assert lesion > 0
    # Each reader kept the lesion and added 256 voxels elsewhere: Dice = 2L / (2L + 512).
    assert body["agreement"][LESION]["dice"] == pytest.approx(2 * lesion / (2 * lesion + 512))
    assert body["agreement"]["liver"]["dice"] == 1.0
    assert body["below_threshold"] == [LESION] and body["status"] == "adjudication"
    with stack.factory() as db:
        task = db.get(ScanTask, scan_id)
        assert task is not None and task.state == "adjudication"
        transition = db.scalars(
            select(TaskTransition).where(TaskTransition.scan_id == scan_id).order_by(TaskTransition.id)
        ).all()[-1]
        assert (transition.action, transition.to_state) == ("adjudicate", "adjudication")
        assert db.scalar(
            select(AuditEvent).where(AuditEvent.action == "task.adjudicate", AuditEvent.scan_id == scan_id)
        )
    # Complete: blinding is over.
    assert client.get(f"/api/versions/{version_b}", headers=a).status_code == 200

    fuse_url = f"/api/reader-sets/{set_id}/fuse"
    assert client.post(fuse_url, headers=a, json={"method": "majority"}).status_code == 403
    assert client.post(fuse_url, headers=lead, json={"method": "mean"}).status_code == 422
    job = _queue_fusion(stack, set_id, "majority")
    # While the job waits, the set shows it; a second fusion of the same set is refused.
    waiting = client.get(f"/api/reader-sets/{set_id}", headers=a).json()
    assert waiting["status"] == "adjudication" and waiting["fusion_version_id"] is None
    assert waiting["fusion_job"]["id"] == job["id"] and waiting["fusion_job"]["status"] == "queued"
    twice = client.post(fuse_url, headers=lead, json={"method": "staple"})
    assert twice.status_code == 409 and twice.json()["details"]["job_id"] == job["id"]

    finished = _run_fusion(stack, job["id"])
    result = finished["result"]
    assert result["reader_set_id"] == set_id and result["method"] == "majority" and result["is_head"]
    assert result["structures_fused"] == 1  # only the lesion differs between the readers: the rest is inherited
    version = client.get(f"/api/versions/{result['label_version_id']}", headers=lead).json()
    assert version["kind"] == "fusion" and version["parent_id"] == version_a and version["is_head"]
    assert str(version_a) in version["message"] and str(version_b) in version["message"]
    # Two readers: the strict majority is their intersection, i.e. the original lesion.
    fused_lesion = read_mask(client, lead, version["id"], LESION)
    np.testing.assert_array_equal(fused_lesion, labelled["phantom"].masks[LESION])
    np.testing.assert_array_equal(read_mask(client, lead, version["id"], "liver"), labelled["phantom"].masks["liver"])
    rows = {r["name"]: r for r in version["structures"]}
    assert rows["femur_left"]["status"] == "missing" and rows[LESION]["changed"]
    assert not rows["liver"]["changed"]
    view = client.get(f"/api/reader-sets/{set_id}", headers=a).json()
    assert view["status"] == "fused" and view["fusion_version_id"] == version["id"]
    assert view["fusion_job"]["id"] == job["id"] and view["fusion_job"]["status"] == "succeeded"
    assert client.post(fuse_url, headers=lead, json={"method": "staple"}).status_code == 409
    lineage = client.get(f"/api/versions/{version['id']}/lineage", headers=lead).json()
    assert [v["id"] for v in lineage] == [version["id"], version_a, base]
    # One parent, but every input: the fusion lists both readings; other versions list none.
    assert version["input_version_ids"] == [version_a, version_b]
    assert lineage[0]["input_version_ids"] == [version_a, version_b] and lineage[1]["input_version_ids"] == []
    listed = {v["id"]: v for v in client.get(f"/api/scans/{scan_id}/versions", headers=lead).json()}
    assert listed[version["id"]]["input_version_ids"] == [version_a, version_b]

    # A redelivered job (its worker died after writing) returns the version it already wrote: no second fusion.
    with stack.factory() as db:
        row = db.get(Job, job["id"])
        assert row is not None
        row.status = "queued"
        db.commit()
    rerun = _run_fusion(stack, job["id"])
    assert rerun["result"]["label_version_id"] == version["id"]
    with stack.factory() as db:
        fusions = db.scalar(
            select(func.count(LabelVersion.id)).where(LabelVersion.scan_id == scan_id, LabelVersion.kind == "fusion")
        )
        assert fusions == 1


def test_a_lead_who_reads_is_blinded_like_any_reader(stack: Stack, stack_labelled: dict[str, Any]) -> None:
    client, labelled = stack.client, stack_labelled
    scan_id, base = labelled["scan"]["id"], labelled["version"]["id"]
    a_id, a = _stack_user_id(stack, "annotator"), stack.headers["annotator"]
    lead_id, lead = _stack_user_id(stack, "lead"), stack.headers["lead"]
    admin = stack.headers["admin"]
    url = f"/api/projects/{stack.project.id}/reader-sets"
    created = client.post(url, headers=lead, json={"scan_ids": [scan_id], "readers": [a_id, lead_id]})
    assert created.status_code == 201, created.text
    set_id = created.json()[0]["id"]
    version_a = _reader_save(client, a, scan_id, base, CORNER_A)
    version_lead = _reader_save(client, lead, scan_id, base, CORNER_B)
    submitted = client.post(f"/api/reader-sets/{set_id}/submit", headers=a, json={"version_id": version_a})
    assert submitted.status_code == 200
    # The reading lead sees neither the annotator's version nor its id in the set, like any reader ...
    assert client.get(f"/api/versions/{version_a}", headers=lead).status_code == 404
    assert version_a not in {v["id"] for v in client.get(f"/api/scans/{scan_id}/versions", headers=lead).json()}
    as_lead = client.get(f"/api/reader-sets/{set_id}", headers=lead).json()
    assert {m["user_id"]: m["version_id"] for m in as_lead["members"]}[a_id] is None
    assert as_lead["agreement"] is None
    assert client.get(f"/api/versions/{version_lead}", headers=lead).status_code == 200
    # ... and the annotator does not see the lead's; an admin who does not read oversees both.
    assert client.get(f"/api/versions/{version_lead}", headers=a).status_code == 404
    assert client.get(f"/api/versions/{version_a}", headers=admin).status_code == 200
    as_admin = client.get(f"/api/reader-sets/{set_id}", headers=admin).json()
    assert {m["user_id"]: m["version_id"] for m in as_admin["members"]}[a_id] == version_a
    done = client.post(f"/api/reader-sets/{set_id}/submit", headers=lead, json={"version_id": version_lead})
    assert done.status_code == 200 and done.json()["status"] in ("complete", "adjudication")
    assert client.get(f"/api/versions/{version_a}", headers=lead).status_code == 200  # the set is done


def test_staple_fusion_matches_simpleitk(stack: Stack, stack_labelled: dict[str, Any]) -> None:
    client, labelled = stack.client, stack_labelled
    scan_id, base = labelled["scan"]["id"], labelled["version"]["id"]
    readers = [(_stack_user_id(stack, "annotator"), stack.headers["annotator"])]
    readers += [_stack_reader(stack, f"reader{i}") for i in (2, 3)]
    lead = stack.headers["lead"]
    created = client.post(
        f"/api/projects/{stack.project.id}/reader-sets",
        headers=lead,
        json={"scan_ids": [scan_id], "readers": [uid for uid, _ in readers]},
    )
    set_id = created.json()[0]["id"]
    corners = [CORNER_A, CORNER_A, CORNER_B]  # two readers agree on the extra box, one does not
    versions = [_reader_save(client, h, scan_id, base, c) for (_, h), c in zip(readers, corners, strict=True)]
    for (_, h), vid in zip(readers, versions, strict=True):
        assert client.post(f"/api/reader-sets/{set_id}/submit", headers=h, json={"version_id": vid}).status_code == 200
    job = _queue_fusion(stack, set_id, "staple")
    fused_id = _run_fusion(stack, job["id"])["result"]["label_version_id"]
    inputs = [read_mask(client, lead, vid, LESION) for vid in versions]
    expected = sitk.GetArrayFromImage(
        sitk.STAPLE([sitk.GetImageFromArray(m.astype(np.uint8)) for m in inputs], 1.0, 1.0)
    )
    fused_lesion = read_mask(client, lead, fused_id, LESION)
    np.testing.assert_array_equal(fused_lesion, expected > 0.5)
    assert fused_lesion[CORNER_A[0] : CORNER_A[0] + 8, CORNER_A[1] : CORNER_A[1] + 8, 1:5].all()
    assert not fused_lesion[CORNER_B[0] : CORNER_B[0] + 8, CORNER_B[1] : CORNER_B[1] + 8, 1:5].any()
    with stack.factory() as db:
        row = db.get(ReaderSet, set_id)
        assert row is not None and row.fusion_method == "staple" and row.fusion_version_id == fused_id
        event = db.scalar(
            select(AuditEvent).where(AuditEvent.action == "reader_set.fuse", AuditEvent.entity_id == str(set_id))
        )
        assert event is not None and len(event.details["staple_sensitivity"][LESION]) == 3


def test_the_fuse_task_is_a_registered_cpu_task() -> None:
    from backend.core import queue
    from backend.jobs import service as jobs
    from worker.tasks import app

    assert queue.TASK_FUSE == "maskloop.fuse" and queue.TASK_FUSE in app.tasks
    assert jobs.TASK_OF_KIND["fuse"] == queue.TASK_FUSE and jobs.QUEUE_OF_KIND["fuse"] == "cpu"


def test_fuse_service_still_fuses_synchronously(
    client: TestClient, db: Session, world: World, settings: Settings, blobs: LocalBlobStore, labelled: dict[str, Any]
) -> None:
    """The synchronous service (plan, compute, store) the pipeline is made of, in one rolled-back transaction."""
    scan_id, base = labelled["scan"]["id"], labelled["version"]["id"]
    other_id, other = _add_reader(db, world, settings, "reader2")
    a_id, a = world.users["annotator"].id, world.headers["annotator"]
    created = client.post(
        f"/api/projects/{world.project.id}/reader-sets",
        headers=world.headers["lead"],
        json={"scan_ids": [scan_id], "readers": [a_id, other_id]},
    )
    set_id = created.json()[0]["id"]
    version_a = _reader_save(client, a, scan_id, base, CORNER_A)
    version_b = _reader_save(client, other, scan_id, base, CORNER_B)
    reader_set = db.get(ReaderSet, set_id)
    assert reader_set is not None
    with pytest.raises(Conflict, match="still open"):
        quality.fuse(db, blobs, reader_set, world.users["lead"], "majority")
    for headers, vid in ((a, version_a), (other, version_b)):
        assert (
            client.post(f"/api/reader-sets/{set_id}/submit", headers=headers, json={"version_id": vid}).status_code
            == 200
        )
    with pytest.raises(PermissionDenied):
        quality.fuse(db, blobs, reader_set, world.users["annotator"], "majority")
    with pytest.raises(InvalidInput, match="unknown fusion method"):
        quality.fuse(db, blobs, reader_set, world.users["lead"], "mean")
    version = quality.fuse(db, blobs, reader_set, world.users["lead"], "majority")
    assert version.kind == "fusion" and version.parent_id == version_a and reader_set.status == "fused"
    fused = read_mask(client, world.headers["lead"], version.id, LESION)
    np.testing.assert_array_equal(fused, labelled["phantom"].masks[LESION])


def test_reader_sets_by_sample_and_auto_picked_readers(
    client: TestClient, db: Session, world: World, settings: Settings
) -> None:
    lead = world.headers["lead"]
    for i in range(3):
        upload_scan(client, lead, world.project.id, small_phantom(seed=i), f"s-{i}")
    _add_reader(db, world, settings, "reader2")
    url = f"/api/projects/{world.project.id}/reader-sets"
    too_many = client.post(url, headers=lead, json={"sample_fraction": 0.5, "n_readers": 3})
    assert too_many.status_code == 422 and "annotator" in too_many.json()["detail"]
    both = client.post(url, headers=lead, json={"scan_ids": [1], "sample_fraction": 0.5, "n_readers": 2})
    assert both.status_code == 422
    made = client.post(url, headers=lead, json={"sample_fraction": 0.67, "n_readers": 2, "seed": 4})
    assert made.status_code == 201, made.text
    sets = made.json()
    assert len(sets) == 2  # round(0.67 * 3)
    annotators = {world.users["annotator"].id} | {
        u.id for u, role in projects.list_members(db, world.project.id) if role == "annotator"
    }
    assert all({m["user_id"] for m in s["members"]} <= annotators and len(s["members"]) == 2 for s in sets)
    # The remaining scan is the only one left to sample.
    rest = client.post(url, headers=lead, json={"sample_fraction": 1.0, "n_readers": 2})
    assert rest.status_code == 201 and len(rest.json()) == 1
    assert {rest.json()[0]["scan_id"]}.isdisjoint({s["scan_id"] for s in sets})
    listed = client.get(f"/api/scans/{sets[0]['scan_id']}/reader-sets", headers=world.headers["viewer"]).json()
    assert [s["id"] for s in listed] == [sets[0]["id"]]


def test_the_project_multi_reader_setting_is_the_default_study_design(
    client: TestClient, db: Session, world: World, settings: Settings
) -> None:
    lead = world.headers["lead"]
    for i in range(4):
        upload_scan(client, lead, world.project.id, small_phantom(seed=i), f"d-{i}")
    _add_reader(db, world, settings, "reader2")
    url = f"/api/projects/{world.project.id}/reader-sets"
    unset = client.post(url, headers=lead, json={})
    assert unset.status_code == 422 and "multi_reader.sample_fraction" in unset.json()["detail"]
    bad = client.patch(
        f"/api/projects/{world.project.id}/settings",
        headers=lead,
        json={"workflow": {"multi_reader": {"sample_fraction": 0.5, "readers": 1}}},
    )
    assert bad.status_code == 422 and "multi_reader.readers" in bad.json()["detail"]
    design = {"sample_fraction": 0.5, "readers": 2, "seed": 7}
    changed = client.patch(
        f"/api/projects/{world.project.id}/settings", headers=lead, json={"workflow": {"multi_reader": design}}
    )
    assert changed.status_code == 200, changed.text
    made = client.post(url, headers=lead, json={})
    assert made.status_code == 201, made.text
    sets = made.json()
    assert len(sets) == 2  # half of the four scans
    assert all(len(s["members"]) == 2 for s in sets)
    # Asked again, the setting samples half of the scans not yet in a set.
    again = client.post(url, headers=lead, json={})
    assert again.status_code == 201 and len(again.json()) == 1
    assert {again.json()[0]["scan_id"]}.isdisjoint({s["scan_id"] for s in sets})
    # A request may still override the design.
    explicit = client.post(url, headers=lead, json={"sample_fraction": 1.0, "n_readers": 2})
    assert explicit.status_code == 201 and len(explicit.json()) == 1


# ------------------------------------------------------------------------------------------------------ settings


def test_validate_settings_normalises_and_refuses() -> None:
    out = quality.validate_settings(
        {
            "review_levels": ["review"],
            "multi_reader": {"agreement_threshold": {"default": 0.7, "liver": 0.9}},
            "qa": {"small_lesion_voxels": 30, "expected_orientation": "ras", "disabled_rules": ["phase_mismatch"]},
            "plausible_volume_ml": {"liver": [None, 3000]},
        }
    )
    assert out["review_levels"] == ["review"]
    assert out["qa"]["expected_orientation"] == "RAS" and out["qa"]["small_lesion_voxels"] == 30
    assert out["plausible_volume_ml"]["liver"] == [None, 3000.0]
    bad: list[tuple[dict[str, Any], str]] = [
        ({"multi_reader": {"agreement_threshold": 1.5}}, "agreement_threshold"),
        ({"multi_reader": {"agreement": 0.5}}, "unknown multi_reader"),
        ({"qa": {"small_lesion_voxels": 2.5}}, "whole number"),
        ({"qa": {"expected_orientation": "RRS"}}, "axis code"),
        ({"qa": {"disabled_rules": ["nope"]}}, "rule ids"),
        ({"plausible_volume_ml": {"liver": [3000, 100]}}, "exceeds the maximum"),
        ({"plausible_volume_ml": {"liver": 100}}, "min_ml"),
    ]
    for settings, message in bad:
        with pytest.raises(InvalidInput, match=message):
            quality.validate_settings(settings)


def test_project_threshold_setting_changes_adjudication(db: Session, world: World) -> None:
    project = world.project
    assert quality.agreement_threshold(project, LESION) == 0.2
    assert quality.agreement_threshold(project, "liver") == 0.8
    project.settings = {**project.settings, "workflow": {"multi_reader": {"agreement_threshold": {"liver": 0.95}}}}
    db.flush()
    assert quality.agreement_threshold(project, "liver") == 0.95
    assert quality.agreement_threshold(project, "spleen") == 0.8
    assert quality.agreement_threshold(project, LESION) == 0.2
    # A section stored without validation that does not validate is ignored (defaults), never a crash.
    project.settings = {**project.settings, "workflow": {"multi_reader": {"agreement_threshold": "high"}}}
    db.flush()
    assert quality.agreement_threshold(project, "liver") == 0.8
