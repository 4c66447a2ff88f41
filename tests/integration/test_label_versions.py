"""Label versions through the API: overlap kept, patch saves exact and O(edit), 409 on a stale base."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import generate_phantom
from tests.conftest import World
from tests.factories import post_patch, read_mask, read_nifti, small_phantom, upload_masks, upload_scan

# `blobs`: the PostgreSQL runs repeat on the S3 blob store (conftest parametrises blob_backend).
pytestmark = [pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True), pytest.mark.blobs]


@pytest.fixture
def labelled(client: TestClient, world: World) -> dict:
    """A phantom scan with its ground truth imported as the first version."""
    phantom = small_phantom(seed=3)
    lead = world.headers["lead"]
    scan = upload_scan(client, lead, world.project.id, phantom, "case-a")
    version = upload_masks(client, lead, scan["id"], phantom.masks, phantom.affine)
    return {"scan": scan, "version": version, "phantom": phantom}


def test_import_version_records_counts_and_missing(client: TestClient, world: World, labelled: dict) -> None:
    version, phantom = labelled["version"], labelled["phantom"]
    rows = {row["name"]: row for row in version["structures"]}
    assert len(rows) == 28
    assert rows["liver"]["status"] == "present"
    assert rows["liver"]["voxel_count"] == int(phantom.masks["liver"].sum())
    voxel_ml = 3.0 * 3.0 * 6.0 / 1000.0
    assert rows["liver"]["volume_ml"] == pytest.approx(phantom.masks["liver"].sum() * voxel_ml)
    # A structure that was never uploaded is unknown, not empty.
    assert rows["femur_left"]["status"] == "missing"
    scan = client.get(f"/api/scans/{labelled['scan']['id']}", headers=world.headers["viewer"]).json()
    assert scan["head_version_id"] == version["id"]


def test_overlap_survives_save_and_read_back(client: TestClient, world: World, labelled: dict) -> None:
    version = labelled["version"]
    headers = world.headers["annotator"]
    pancreas = read_mask(client, headers, version["id"], "pancreas")
    parts = [read_mask(client, headers, version["id"], p) for p in ("pancreas_head", "pancreas_body", "pancreas_tail")]
    union = parts[0] | parts[1] | parts[2]
    assert union.any()
    assert not (union & ~pancreas).any()
    # Painting the head (a sub-structure) must not erase or change the pancreas around it.
    box = np.ones((4, 4, 2), dtype=bool)
    head_voxel = np.argwhere(parts[0])[0]
    origin = tuple(int(v) for v in np.clip(head_voxel - 1, 0, None))
    response = post_patch(client, headers, labelled["scan"]["id"], version["id"], [("pancreas_head", origin, box)])
    assert response.status_code == 201, response.text
    child = response.json()
    assert np.array_equal(read_mask(client, headers, child["id"], "pancreas"), pancreas)
    changed = {row["name"] for row in child["structures"] if row["changed"]}
    assert changed == {"pancreas_head"}


def test_patch_changes_exactly_the_patched_voxels(client: TestClient, world: World, labelled: dict) -> None:
    version = labelled["version"]
    headers = world.headers["annotator"]
    before = read_mask(client, headers, version["id"], "liver")
    box = np.zeros((10, 12, 3), dtype=bool)
    box[2:8, 3:9, :] = True
    origin = (20, 30, 10)
    response = post_patch(client, headers, labelled["scan"]["id"], version["id"], [("liver", origin, box)], "fix liver")
    assert response.status_code == 201, response.text
    child = response.json()
    assert child["parent_id"] == version["id"]
    assert child["kind"] == "human"
    assert child["author"]["display_name"] == "Annotator"
    after = read_mask(client, headers, child["id"], "liver")
    expected = before.copy()
    expected[20:30, 30:42, 10:13] = box
    assert np.array_equal(after, expected)
    rows = {row["name"]: row for row in child["structures"]}
    assert rows["liver"]["voxel_count"] == int(expected.sum())
    # The untouched structures are byte-identical, shared with the parent.
    assert np.array_equal(
        read_mask(client, headers, child["id"], "spleen"), read_mask(client, headers, version["id"], "spleen")
    )


def test_stale_base_gets_409_and_nothing_is_overwritten(client: TestClient, world: World, labelled: dict) -> None:
    scan_id, base = labelled["scan"]["id"], labelled["version"]["id"]
    box = np.ones((3, 3, 1), dtype=bool)
    first = post_patch(client, world.headers["annotator"], scan_id, base, [("spleen", (5, 5, 5), box)], "first")
    assert first.status_code == 201
    stale = post_patch(client, world.headers["reviewer"], scan_id, base, [("liver", (6, 6, 6), box)], "second")
    assert stale.status_code == 409
    body = stale.json()
    assert body["details"]["head_version_id"] == first.json()["id"]
    assert body["details"]["head_author"] == "Annotator"
    assert body["details"]["head_message"] == "first"
    versions = client.get(f"/api/scans/{scan_id}/versions", headers=world.headers["viewer"]).json()
    assert [v["id"] for v in versions] == [base, first.json()["id"]]
    # The user can keep their edit as a branch beside the head instead of losing it.
    branch = post_patch(
        client, world.headers["reviewer"], scan_id, base, [("liver", (6, 6, 6), box)], "second", branch=True
    )
    assert branch.status_code == 201
    assert branch.json()["is_branch"] is True
    scan = client.get(f"/api/scans/{scan_id}", headers=world.headers["viewer"]).json()
    assert scan["head_version_id"] == first.json()["id"]


def test_patch_storage_is_far_below_a_full_copy(client: TestClient, world: World) -> None:
    # Big enough that each organ spans many 64-voxel chunks, as in a real CT.
    phantom = generate_phantom((192, 192, 128), (2.0, 2.0, 2.5), seed=4)
    lead = world.headers["lead"]
    scan = upload_scan(client, lead, world.project.id, phantom, "case-big")
    version = upload_masks(client, lead, scan["id"], phantom.masks, phantom.affine)
    full_bytes = version["new_bytes"]
    box = np.ones((12, 12, 5), dtype=bool)
    response = post_patch(client, world.headers["annotator"], scan["id"], version["id"], [("liver", (70, 90, 60), box)])
    assert response.status_code == 201, response.text
    patch_bytes = response.json()["new_bytes"]
    # Against our own (already deduplicated) full version, and against re-uploading every mask file.
    full_upload = sum(len(to_nifti_gz(m.astype(np.uint8), phantom.affine)) for m in phantom.masks.values())
    assert 0 < patch_bytes < full_bytes * 0.15
    assert patch_bytes < full_upload * 0.02


def test_idempotent_retry_returns_the_same_version(client: TestClient, world: World, labelled: dict) -> None:
    box = np.ones((2, 2, 2), dtype=bool)
    args = (client, world.headers["annotator"], labelled["scan"]["id"], labelled["version"]["id"])
    first = post_patch(*args, [("liver", (1, 1, 1), box)], idempotency_key="save-123")
    again = post_patch(*args, [("liver", (1, 1, 1), box)], idempotency_key="save-123")
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]


def test_combined_map_paints_in_explicit_order(client: TestClient, world: World, labelled: dict) -> None:
    version_id = labelled["version"]["id"]
    headers = world.headers["viewer"]
    response = client.get(f"/api/versions/{version_id}/combined", headers=headers)
    assert response.status_code == 200
    order = response.headers["x-paint-order"].split(",")
    assert order.index("pancreas") < order.index("pancreas_head")
    labels = np.asarray(read_nifti(response.content).dataobj)
    head = read_mask(client, headers, version_id, "pancreas_head")
    lesion = read_mask(client, headers, version_id, "pancreatic_lesion")
    assert (labels[head & ~lesion] == 19).all()  # head painted after pancreas stays visible
    assert (labels[lesion] == 28).all()
    reversed_map = client.get(f"/api/versions/{version_id}/combined?order=pancreas_head,pancreas", headers=headers)
    labels_rev = np.asarray(read_nifti(reversed_map.content).dataobj)
    assert (labels_rev[head] == 17).all()
    assert set(np.unique(labels_rev)) == {0, 17}


def test_version_from_combined_map(client: TestClient, world: World, labelled: dict) -> None:
    phantom = labelled["phantom"]
    label_map = np.zeros(phantom.volume.shape, dtype=np.uint8)
    label_map[phantom.masks["liver"]] = 14
    label_map[phantom.masks["spleen"]] = 24
    response = client.post(
        f"/api/scans/{labelled['scan']['id']}/versions/combined",
        headers=world.headers["annotator"],
        files={"file": ("labels.nii.gz", to_nifti_gz(label_map, phantom.affine), "application/gzip")},
        data={"base_version_id": str(labelled["version"]["id"])},
    )
    assert response.status_code == 201, response.text
    rows = {row["name"]: row for row in response.json()["structures"]}
    assert rows["liver"]["voxel_count"] == int(phantom.masks["liver"].sum())
    assert rows["pancreas"]["voxel_count"] == 0 and rows["pancreas"]["status"] == "present"
    bad = label_map.copy()
    bad[0, 0, 0] = 99
    response = client.post(
        f"/api/scans/{labelled['scan']['id']}/versions/combined",
        headers=world.headers["annotator"],
        files={"file": ("labels.nii.gz", to_nifti_gz(bad, phantom.affine), "application/gzip")},
        data={"base_version_id": str(response.json()["id"])},
    )
    assert response.status_code == 422
    assert "99" in response.json()["detail"]


def test_diff_reports_changed_voxels_and_dice(client: TestClient, world: World, labelled: dict) -> None:
    base = labelled["version"]["id"]
    headers = world.headers["annotator"]
    liver = read_mask(client, headers, base, "liver")
    box = np.zeros((8, 8, 4), dtype=bool)
    origin = (0, 0, 0)
    removed_expected = int(liver[0:8, 0:8, 0:4].sum())
    child = post_patch(client, headers, labelled["scan"]["id"], base, [("liver", origin, box)]).json()
    response = client.get(f"/api/versions/{child['id']}/diff", params={"against": base}, headers=headers)
    assert response.status_code == 200
    rows = {row["structure"]: row for row in response.json()["structures"]}
    after = liver.copy()
    after[0:8, 0:8, 0:4] = False
    assert rows["liver"]["removed"] == removed_expected
    assert rows["liver"]["added"] == 0
    expected_dice = 2 * (liver & after).sum() / (liver.sum() + after.sum())
    assert rows["liver"]["dice"] == pytest.approx(expected_dice)
    assert rows["spleen"]["dice"] == 1.0 and rows["spleen"]["added"] == 0
    assert rows["femur_left"]["dice"] is None  # missing on both sides: undefined, not 0 or 1


def test_lineage_walks_back_to_the_import(client: TestClient, world: World, labelled: dict) -> None:
    headers = world.headers["annotator"]
    base = labelled["version"]["id"]
    box = np.ones((2, 2, 2), dtype=bool)
    v2 = post_patch(client, headers, labelled["scan"]["id"], base, [("liver", (1, 1, 1), box)]).json()
    v3 = post_patch(client, headers, labelled["scan"]["id"], v2["id"], [("spleen", (1, 1, 1), box)]).json()
    chain = client.get(f"/api/versions/{v3['id']}/lineage", headers=headers).json()
    assert [v["id"] for v in chain] == [v3["id"], v2["id"], base]
    assert chain[-1]["kind"] == "import"


def test_draft_autosave_survives_and_is_private(client: TestClient, world: World, labelled: dict) -> None:
    scan_id, base = labelled["scan"]["id"], labelled["version"]["id"]
    url = f"/api/scans/{scan_id}/draft"
    assert client.get(url, headers=world.headers["annotator"]).status_code == 404
    payload = {"structure": "liver", "strokes": [[1, 2, 3]], "undo": []}
    saved = client.put(url, headers=world.headers["annotator"], json={"base_version_id": base, "payload": payload})
    assert saved.status_code == 200, saved.text
    again = client.get(url, headers=world.headers["annotator"]).json()
    assert again["payload"] == payload and again["base_is_head"] is True
    # Another user does not see it; a viewer may not keep drafts.
    assert client.get(url, headers=world.headers["reviewer"]).status_code == 404
    assert client.put(url, headers=world.headers["viewer"], json={"payload": {}}).status_code == 403
    bad = client.put(url, headers=world.headers["annotator"], content=b"not json")
    assert bad.status_code == 422
    assert client.delete(url, headers=world.headers["annotator"]).status_code == 204
    assert client.get(url, headers=world.headers["annotator"]).status_code == 404


def test_first_version_of_an_unlabelled_scan_by_patch(client: TestClient, world: World) -> None:
    phantom = small_phantom(seed=8)
    scan = upload_scan(client, world.headers["lead"], world.project.id, phantom, "fresh")
    box = np.ones((3, 3, 2), dtype=bool)
    first = post_patch(client, world.headers["annotator"], scan["id"], None, [("liver", (10, 10, 10), box)])
    assert first.status_code == 201, first.text
    rows = {row["name"]: row for row in first.json()["structures"]}
    assert rows["liver"]["status"] == "present" and rows["liver"]["voxel_count"] == 18
    assert rows["spleen"]["status"] == "missing"
    assert first.json()["parent_id"] is None
    # A second "first" save on the same scan is stale now.
    again = post_patch(client, world.headers["reviewer"], scan["id"], None, [("liver", (0, 0, 0), box)])
    assert again.status_code == 409 and again.json()["details"]["head_version_id"] == first.json()["id"]
