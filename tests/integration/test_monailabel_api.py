"""MONAI Label-compatible endpoints through TestClient: auth, info, next sample, datastore, label saves, refusals."""

from __future__ import annotations

import email
import email.policy
import gzip
import hashlib
import json
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend.flows import monailabel as monailabel_flows
from backend.imaging.nifti import to_nifti_gz
from backend.jobs import service as jobs
from backend.labels import service as labels
from backend.models import Model, ModelVersion, Scan
from backend.projects import service as projects
from tests.conftest import PASSWORD, World
from tests.factories import small_phantom, upload_masks, upload_scan
from tests.integration.workflow_support import set_task, task

pytestmark = pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)

BASE = "/monailabel/demo"


@pytest.fixture
def labelled(client: TestClient, world: World) -> dict[str, Any]:
    """A phantom scan 'case-a' with its ground truth imported as the first version."""
    phantom = small_phantom(seed=5)
    lead = world.headers["lead"]
    scan = upload_scan(client, lead, world.project.id, phantom, "case-a")
    version = upload_masks(client, lead, scan["id"], phantom.masks, phantom.affine)
    return {"scan": scan, "version": version, "phantom": phantom}


def _put_label(
    client: TestClient, headers: dict[str, str], image: str, label_map: np.ndarray, affine: np.ndarray, **params: Any
) -> Any:
    body = {"client_id": "slicer-a", **params}
    files = {"label": (f"{image}.nii.gz", to_nifti_gz(label_map, affine), "application/octet-stream")}
    return client.put(
        f"{BASE}/datastore/label",
        params={"image": image, "tag": "final"},
        headers=headers,
        files=files,
        data={"params": json.dumps(body)},
    )


def _sample(client: TestClient, headers: dict[str, str], client_id: str, strategy: str = "priority") -> dict[str, Any]:
    response = client.post(f"{BASE}/activelearning/{strategy}", headers=headers, json={"client_id": client_id})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _decode(content: bytes) -> np.ndarray:
    image = nib.Nifti1Image.from_bytes(gzip.decompress(content))
    return np.asarray(image.dataobj)


def test_auth_token_and_validity(client: TestClient, world: World) -> None:
    assert client.get(f"{BASE}/auth/").json() == {"enabled": True}
    response = client.post(f"{BASE}/auth/token", data={"username": "annotator@example.org", "password": PASSWORD})
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["token_type"] == "Bearer"
    good = {"Authorization": f"Bearer {token['access_token']}"}
    assert client.get(f"{BASE}/auth/token/valid", headers=good).status_code == 200
    bad = {"Authorization": "Bearer not-a-token"}
    assert client.get(f"{BASE}/auth/token/valid", headers=bad).status_code == 401
    assert client.get(f"{BASE}/info/", headers=bad).status_code == 401
    wrong = client.post(f"{BASE}/auth/token", data={"username": "annotator@example.org", "password": "nope"})
    assert wrong.status_code == 401


def test_info_lists_schema_labels_and_totals(client: TestClient, world: World, labelled: dict[str, Any]) -> None:
    response = client.get(f"{BASE}/info/", headers=world.headers["annotator"])
    assert response.status_code == 200, response.text
    info = response.json()
    assert len(info["labels"]) == 28
    assert set(info["strategies"]) == {"priority", "random", "first"}
    assert info["trainers"] == {}
    assert info["datastore"]["total"] == 1
    assert info["datastore"]["completed"] == 1
    # The project by id answers too; an outsider gets 404.
    assert client.get(f"/monailabel/{world.project.id}/info/", headers=world.headers["viewer"]).status_code == 200
    assert client.get(f"{BASE}/info/", headers=world.headers["outsider"]).status_code == 404


def test_activelearning_takes_lease_and_image_equals_scan(
    client: TestClient, world: World, labelled: dict[str, Any]
) -> None:
    headers = world.headers["annotator"]
    sample = _sample(client, headers, "slicer-a")
    assert sample["id"] == "case-a"
    lease = task(client, headers, labelled["scan"]["id"])["lease"]
    assert lease is not None and lease["user_id"] == world.users["annotator"].id
    image = client.get(f"{BASE}/datastore/image", params={"image": "case-a"}, headers=headers)
    assert image.status_code == 200
    volume = client.get(f"/api/scans/{labelled['scan']['id']}/volume", headers=headers)
    assert image.content == volume.content
    assert sample["checksum"] == "SHA256:" + hashlib.sha256(image.content).hexdigest()
    label = client.get(f"{BASE}/datastore/label", params={"label": "case-a", "tag": "final"}, headers=headers)
    assert label.status_code == 200
    assert _decode(label.content).shape == tuple(labelled["scan"]["shape"])
    missing = client.get(f"{BASE}/datastore/image", params={"image": "nope"}, headers=headers)
    assert missing.status_code == 404


def _combined(client: TestClient, headers: dict[str, str], version_id: int) -> np.ndarray:
    response = client.get(f"/api/versions/{version_id}/combined", headers=headers)
    assert response.status_code == 200
    return _decode(response.content)


def test_save_label_versions_stale_and_approved(
    client: TestClient, world: World, labelled: dict[str, Any], db: Session
) -> None:
    headers, phantom = world.headers["annotator"], labelled["phantom"]
    _sample(client, headers, "slicer-a")
    _sample(client, headers, "slicer-b", strategy="first")
    head = labelled["version"]["id"]
    label_map = _combined(client, headers, head).astype(np.uint8)
    label_map[label_map == label_map.max()] = 0  # one structure erased
    response = _put_label(client, headers, "case-a", label_map, phantom.affine, client_id="slicer-b")
    assert response.status_code == 200, response.text
    saved = response.json()
    assert saved["image"] == "case-a"
    versions = client.get(f"/api/scans/{labelled['scan']['id']}/versions", headers=headers).json()
    newest = versions[-1]
    assert newest["parent_id"] == head
    assert newest["author"]["user_id"] == world.users["annotator"].id
    # Client a was given the old head: its save is stale, naming the head's author.
    stale = _put_label(client, headers, "case-a", label_map, phantom.affine, client_id="slicer-a")
    assert stale.status_code == 409, stale.text
    assert stale.json()["details"]["head_author"] == "Annotator"
    # Deleting is refused: versions are immutable.
    deleted = client.delete(f"{BASE}/datastore/label", params={"id": "case-a", "tag": "final"}, headers=headers)
    assert deleted.status_code == 405
    assert "immutable" in deleted.json()["detail"]
    # An approved scan refuses saves.
    set_task(db, labelled["scan"]["id"], state="approved")
    approved = _put_label(client, headers, "case-a", label_map, phantom.affine, client_id="slicer-b")
    assert approved.status_code == 409, approved.text


def _digests(db: Session, version_id: int) -> dict[str, tuple[str | None, int]]:
    version = labels.get_version(db, version_id)
    scan = db.get(Scan, version.scan_id)
    assert scan is not None
    names = {s.id: s.name for s in projects.structures_of(db, scan.project_id)}
    return {names[sid]: (e.manifest_digest, e.voxel_count) for sid, e in labels.entries_by_structure(version).items()}


def test_combined_save_rewrites_only_the_structures_it_changed(
    client: TestClient, world: World, labelled: dict[str, Any], db: Session
) -> None:
    headers, phantom = world.headers["annotator"], labelled["phantom"]
    _sample(client, headers, "slicer-a")
    head = labelled["version"]["id"]
    schema = {s.name: s.label_value for s in projects.structures_of(db, world.project.id)}
    before = _digests(db, head)
    label_map = _combined(client, headers, head).astype(np.uint8)
    liver = np.argwhere(label_map == schema["liver"])[:40]
    label_map[tuple(liver.T)] = 0
    # A visible head voxel repainted as body: the parts change, the pancreas holding both does not.
    moved = np.argwhere(label_map == schema["pancreas_head"])[:5]
    label_map[tuple(moved.T)] = schema["pancreas_body"]
    response = _put_label(client, headers, "case-a", label_map, phantom.affine)
    assert response.status_code == 200, response.text
    after = _digests(db, int(response.json()["version"]))
    changed = sorted(name for name in before if before[name] != after[name])
    assert changed == ["liver", "pancreas_body", "pancreas_head"]
    assert after["liver"][1] == before["liver"][1] - 40
    assert after["pancreas_head"][1] == before["pancreas_head"][1] - 5
    assert after["pancreas_body"][1] == before["pancreas_body"][1] + 5
    # A changed voxel carrying a value that names no structure is refused, naming the value.
    label_map[0, 0, 0] = 250
    stray = _put_label(client, headers, "case-a", label_map, phantom.affine)
    assert stray.status_code == 422, stray.text
    assert "250" in stray.json()["detail"]


def test_combined_save_with_client_indices_maps_them_to_the_schema(
    client: TestClient, world: World, labelled: dict[str, Any], db: Session
) -> None:
    headers, phantom = world.headers["annotator"], labelled["phantom"]
    _sample(client, headers, "slicer-a")
    head = labelled["version"]["id"]
    before = _digests(db, head)
    # The client names only the liver, under its own index 200, and painted 30 background voxels with it; the
    # voxels of structures it does not name stay as it received them.
    liver = next(s.label_value for s in projects.structures_of(db, world.project.id) if s.name == "liver")
    label_map = _combined(client, headers, head).astype(np.uint8)
    spots = np.argwhere(label_map == 0)[:30]
    label_map[label_map == liver] = 200
    label_map[tuple(spots.T)] = 200
    info = [{"name": "liver", "idx": 200}]
    response = _put_label(client, headers, "case-a", label_map, phantom.affine, label_info=info)
    assert response.status_code == 200, response.text
    after = _digests(db, int(response.json()["version"]))
    assert sorted(name for name in before if before[name] != after[name]) == ["liver"]
    assert after["liver"][1] == before["liver"][1] + 30


def test_wrong_grid_and_other_project(client: TestClient, world: World, labelled: dict[str, Any], db: Session) -> None:
    headers, phantom = world.headers["annotator"], labelled["phantom"]
    _sample(client, headers, "slicer-a")
    small = np.zeros((8, 8, 8), dtype=np.uint8)
    wrong = _put_label(client, headers, "case-a", small, phantom.affine)
    assert wrong.status_code == 422, wrong.text
    # A scan of another project is 404 through this project's URL and to a non-member of that project.
    admin = world.users["platform_admin"]
    other = projects.create_project(db, "other", "Other", admin)
    projects.set_membership(db, other.id, world.users["lead"], "lead", admin)
    db.flush()
    lead = world.headers["lead"]
    upload_scan(client, lead, other.id, small_phantom(seed=6), "case-b")
    assert client.get(f"{BASE}/datastore/image", params={"image": "case-b"}, headers=lead).status_code == 404
    response = client.get("/monailabel/other/datastore/image", params={"image": "case-b"}, headers=headers)
    assert response.status_code == 404


def test_datastore_paging(client: TestClient, world: World, labelled: dict[str, Any]) -> None:
    response = client.get(f"{BASE}/datastore/", params={"output": "all"}, headers=world.headers["viewer"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == 1
    assert list(body["objects"]) == ["case-a"]
    assert len(body["objects"]) <= 1000


def _classical_model(db: Session, world: World) -> ModelVersion:
    """The weightless classical HU model, registered with a promoted version."""
    model = Model(project_id=world.project.id, name="classical-hu", architecture="classical", structures=["liver"])
    db.add(model)
    db.flush()
    version = ModelVersion(model_id=model.id, number=1, is_promoted=True)
    db.add(version)
    db.flush()
    return version


def _parts(response: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    message = email.message_from_bytes(
        f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode() + response.content,
        policy=email.policy.HTTP,
    )
    params: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        if part.get_filename():
            files[str(part.get_filename())] = payload
        else:
            params = json.loads(payload)
    return params, files


def test_infer_times_out_with_the_job_id(
    client: TestClient, world: World, labelled: dict[str, Any], db: Session, settings: Any, monkeypatch: Any
) -> None:
    _classical_model(db, world)
    monkeypatch.setattr(settings, "monailabel_infer_timeout_s", 0.3)
    headers = world.headers["annotator"]
    response = client.post(f"{BASE}/infer/classical-hu", params={"image": "case-a"}, headers=headers)
    assert response.status_code == 504, response.text
    job_id = response.json()["details"]["job_id"]
    job = client.get(f"/api/jobs/{job_id}", headers=world.headers["lead"])
    assert job.status_code == 200 and job.json()["status"] == "queued"
    missing = client.post(f"{BASE}/infer/nope", params={"image": "case-a"}, headers=headers)
    assert missing.status_code == 404


def test_infer_answers_the_jobs_version_and_the_client_saves_on_it(
    client: TestClient, world: World, labelled: dict[str, Any], db: Session, blobs: Any, monkeypatch: Any
) -> None:
    model_version = _classical_model(db, world)
    phantom, headers = labelled["phantom"], world.headers["annotator"]
    real_get_job = monailabel_flows.jobs.get_job

    def worker_then_get(session: Session, job_id: int) -> Any:
        """Stands in for the worker: the first look finds the job done with a model version on the head."""
        job = real_get_job(session, job_id)
        if job.status == "queued":
            scan = session.get(Scan, labelled["scan"]["id"])
            assert scan is not None
            version = labels.create_version(
                session,
                blobs,
                scan,
                author=labels.Author(user_id=None, model_version_id=model_version.id),
                kind="model",
                base_version_id=scan.head_version_id,
                masks={"liver": phantom.masks["liver"]},
            )
            jobs.succeed(session, job, {"label_version_id": version.id})
            session.commit()
        return job

    monkeypatch.setattr(monailabel_flows.jobs, "get_job", worker_then_get)
    _sample(client, headers, "slicer-a")
    params = {"client_id": "slicer-a", "result_extension": ".nii.gz"}
    response = client.post(
        f"{BASE}/infer/classical-hu",
        params={"image": "case-a", "output": "image"},
        headers=headers,
        files={"unused": ("x.bin", b"", "application/octet-stream")},
        data={"params": json.dumps(params)},
    )
    assert response.status_code == 200, response.text
    answer, files = _parts(response)
    assert answer["label_names"]["liver"] > 0
    version_id = answer["label_version_id"]
    assert list(files) == ["case-a.nii.gz"]
    assert np.array_equal(_decode(files["case-a.nii.gz"]), _combined(client, headers, version_id))
    # The client was given the model's version: its save builds on it.
    label_map = _combined(client, headers, version_id).astype(np.uint8)
    saved = _put_label(client, headers, "case-a", label_map, phantom.affine, client_id="slicer-a")
    assert saved.status_code == 200, saved.text
    versions = client.get(f"/api/scans/{labelled['scan']['id']}/versions", headers=headers).json()
    assert versions[-1]["parent_id"] == version_id
    # Slicer asks for .nrrd: the answer is a .seg.nrrd.
    params["result_extension"] = ".nrrd"
    nrrd = client.post(
        f"{BASE}/infer/classical-hu",
        params={"image": "case-a"},
        headers=headers,
        files={"unused": ("x.bin", b"", "application/octet-stream")},
        data={"params": json.dumps(params)},
    )
    assert nrrd.status_code == 200, nrrd.text
    assert list(_parts(nrrd)[1]) == ["case-a.seg.nrrd"]


def test_train_is_for_leads(client: TestClient, world: World, labelled: dict[str, Any], db: Session) -> None:
    _classical_model(db, world)
    refused = client.post(f"{BASE}/train/", headers=world.headers["annotator"])
    assert refused.status_code == 403, refused.text
    info = client.get(f"{BASE}/info/", headers=world.headers["lead"]).json()
    assert "classical-hu" in info["trainers"]
