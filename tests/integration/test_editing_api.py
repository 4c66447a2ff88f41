"""POST /api/scans/{id}/operations through the real app: access like a patch save, clear 4xx for bad input, and a
round trip whose preview box, written into the client's mask and saved as a patch, gives the expected mask."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.editing.service import morphology
from backend.editing.service.boxes import nonzero_bounds
from backend.imaging import chunks
from tests.conftest import World
from tests.factories import SMALL_SPACING, post_patch, read_mask, small_phantom, upload_masks, upload_scan

STRUCTURES = ("liver", "spleen", "pancreas", "pancreas_head", "stomach")


@pytest.fixture
def labelled(client: TestClient, world: World) -> dict[str, Any]:
    """A 64×64×32 phantom scan (3×3×6 mm) with a version holding a few of its structures."""
    phantom = small_phantom(seed=4)
    headers = world.headers["annotator"]
    scan = upload_scan(client, world.headers["lead"], world.project.id, phantom, "EDIT_0001")
    masks = {name: phantom.masks[name] for name in STRUCTURES}
    version = upload_masks(client, headers, scan["id"], masks, phantom.affine)
    return {"scan": scan, "version": version, "phantom": phantom, "masks": masks}


def box_of(name: str, mask: np.ndarray, part: str) -> tuple[dict[str, Any], tuple[str, bytes]]:
    """An `inputs` entry and its part for a whole mask, sent as its non-zero bounding box."""
    bounds = nonzero_bounds(mask)
    if bounds is None:
        return {"structure": name, "origin": [0, 0, 0], "size": [0, 0, 0]}, (part, b"")
    lo, hi = bounds
    box = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    entry = {"structure": name, "origin": list(lo), "size": list(box.shape), "encoding": "bits+gzip", "part": part}
    return entry, (part, chunks.encode_box(box))


def post_operation(
    client: TestClient,
    headers: dict[str, str],
    scan_id: int,
    operation: str,
    structure: str,
    params: dict[str, Any],
    masks: dict[str, np.ndarray],
    **extra: Any,
) -> Any:
    """Send an operation with the given current masks as inputs; returns the raw response."""
    inputs, files = [], {}
    for i, (name, mask) in enumerate(masks.items()):
        entry, (part, data) = box_of(name, mask, f"p{i}")
        inputs.append(entry)
        if "part" in entry:
            files[part] = (part, data, "application/octet-stream")
    meta = {"operation": operation, "structure": structure, "params": params, "inputs": inputs, **extra}
    return client.post(
        f"/api/scans/{scan_id}/operations", headers=headers, data={"meta": json.dumps(meta)}, files=files or None
    )


def apply_result(mask: np.ndarray, result: dict[str, Any]) -> np.ndarray:
    """Write the answer's box into a copy of the client's mask, as the editor does."""
    out = mask.copy()
    size = tuple(result["size"])
    if size == (0, 0, 0):
        return out
    assert result["encoding"] == "bits+gzip"
    box = chunks.decode_box(base64.b64decode(result["data"]), size, "bits+gzip")
    o = result["origin"]
    out[o[0] : o[0] + size[0], o[1] : o[1] + size[1], o[2] : o[2] + size[2]] = box
    return out


# --- round trips ---


def test_margin_preview_applied_and_saved_as_a_patch_gives_the_grown_mask(
    client: TestClient, world: World, labelled: dict[str, Any]
) -> None:
    """+6 mm on the liver: the preview box holds every changed voxel, the counts match, and saving the box as a
    patch stores exactly the grown liver (nothing was saved by the operation itself)."""
    headers = world.headers["annotator"]
    scan_id, liver = labelled["scan"]["id"], labelled["masks"]["liver"]
    response = post_operation(client, headers, scan_id, "margin", "liver", {"mm": 6.0}, {"liver": liver})
    assert response.status_code == 200, response.text
    result = response.json()
    expected = morphology.margin(liver, SMALL_SPACING, 6.0)
    assert result["structure"] == "liver" and result["removed"] == 0
    assert result["added"] == int(np.count_nonzero(expected & ~liver)) > 0
    assert "grew by 6 mm" in result["summary"]
    applied = apply_result(liver, result)
    assert np.array_equal(applied, expected)
    assert client.get(f"/api/scans/{scan_id}", headers=headers).json()["head_version_id"] == labelled["version"]["id"]
    o, size = result["origin"], result["size"]
    box = applied[o[0] : o[0] + size[0], o[1] : o[1] + size[1], o[2] : o[2] + size[2]]
    saved = post_patch(client, headers, scan_id, labelled["version"]["id"], [("liver", tuple(o), box)], "margin")
    assert saved.status_code == 201, saved.text
    assert np.array_equal(read_mask(client, headers, saved.json()["id"], "liver"), expected)


def test_unsaved_edits_count_and_interpolation_only_adds(
    client: TestClient, world: World, labelled: dict[str, Any]
) -> None:
    """The client's current (unsaved) mask is what is interpolated; every voxel of it is kept."""
    mask = np.zeros(labelled["phantom"].volume.shape, dtype=bool)
    yy, xx = np.ogrid[:64, :64]
    mask[:, :, 10] = (yy - 30) ** 2 + (xx - 30) ** 2 <= 36
    mask[:, :, 14] = (yy - 30) ** 2 + (xx - 30) ** 2 <= 100
    mask[50, 50, 12] = True
    params = {"axis": 2, "key_slices": [10, 14]}
    response = post_operation(
        client,
        world.headers["annotator"],
        labelled["scan"]["id"],
        "interpolate",
        "pancreas",
        params,
        {"pancreas": mask},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    applied = apply_result(mask, result)
    assert result["removed"] == 0 and result["added"] > 0 and (applied >= mask).all()
    assert all(applied[:, :, k][30, 30] for k in (11, 12, 13)) and applied[50, 50, 12]
    assert np.array_equal(applied[:, :, 10], mask[:, :, 10]) and np.array_equal(applied[:, :, 14], mask[:, :, 14])


def test_islands_logical_scissors_and_an_empty_change(client: TestClient, world: World, labelled: dict) -> None:
    """keep_largest leaves one island; subtract removes the overlap; scissors erase; no change → empty box."""
    headers, scan_id = world.headers["annotator"], labelled["scan"]["id"]
    liver, spleen = labelled["masks"]["liver"], labelled["masks"]["spleen"]
    specks = liver.copy()
    specks[2, 2, 2] = specks[60, 3, 30] = True
    result = post_operation(client, headers, scan_id, "islands", "liver", {"mode": "keep_largest"}, {"liver": specks})
    assert result.status_code == 200, result.text
    assert result.json()["removed"] == 2 and np.array_equal(apply_result(specks, result.json()), liver)
    union = liver | spleen
    params = {"op": "subtract", "source": "spleen"}
    answer = post_operation(client, headers, scan_id, "logical", "liver", params, {"liver": union, "spleen": spleen})
    assert np.array_equal(apply_result(union, answer.json()), union & ~spleen)
    polygon = [[0, 0], [0, 63], [31.5, 63], [31.5, 0]]  # the half i < 32 of every axial slice
    params = {"polygon": polygon, "axis": 2, "keep": "outside", "slab": None}
    cut = post_operation(client, headers, scan_id, "scissors", "liver", params, {"liver": liver}).json()
    assert not apply_result(liver, cut)[:32].any() and np.array_equal(apply_result(liver, cut)[32:], liver[32:])
    nothing = post_operation(client, headers, scan_id, "fill_holes", "liver", {}, {"liver": liver}).json()
    assert nothing["size"] == [0, 0, 0] and nothing["data"] == "" and nothing["added"] == nothing["removed"] == 0


def test_statistics_read_the_ct_under_each_mask(client: TestClient, world: World, labelled: dict) -> None:
    """Voxels, mL and HU mean/SD/min/max per input structure, from the stored CT; an empty structure has no HU."""
    headers, scan_id, phantom = world.headers["annotator"], labelled["scan"]["id"], labelled["phantom"]
    liver, spleen = labelled["masks"]["liver"], labelled["masks"]["spleen"]
    empty = np.zeros_like(liver)
    masks = {"liver": liver, "spleen": spleen, "pancreatic_lesion": empty}
    response = post_operation(client, headers, scan_id, "statistics", "liver", {}, masks)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["size"] == [0, 0, 0] and body["added"] == 0
    rows = {row["structure"]: row for row in body["stats"]["structures"]}
    assert list(rows) == ["liver", "spleen", "pancreatic_lesion"]
    for name, mask in (("liver", liver), ("spleen", spleen)):
        hu = phantom.volume[mask].astype(np.float64)
        row = rows[name]
        assert row["voxels"] == int(mask.sum())
        assert row["volume_ml"] == pytest.approx(mask.sum() * 3 * 3 * 6 / 1000)
        assert row["hu_mean"] == pytest.approx(hu.mean()) and row["hu_sd"] == pytest.approx(hu.std())
        assert (row["hu_min"], row["hu_max"]) == (hu.min(), hu.max())
    assert rows["pancreatic_lesion"]["voxels"] == 0 and rows["pancreatic_lesion"]["hu_mean"] is None


# --- access ---


def test_access_is_that_of_a_patch_save(client: TestClient, world: World, labelled: dict) -> None:
    """No token: 401; a viewer (no write_labels): 403; an outsider or a missing scan: 404; annotator and
    reviewer: 200."""
    scan_id, liver = labelled["scan"]["id"], labelled["masks"]["liver"]
    args = ("margin", "liver", {"mm": 3.0}, {"liver": liver})
    assert post_operation(client, {}, scan_id, *args).status_code == 401
    assert post_operation(client, world.headers["viewer"], scan_id, *args).status_code == 403
    assert post_operation(client, world.headers["outsider"], scan_id, *args).status_code == 404
    assert post_operation(client, world.headers["annotator"], 999_999, *args).status_code == 404
    for role in ("annotator", "reviewer", "lead"):
        assert post_operation(client, world.headers[role], scan_id, *args).status_code == 200


# --- bad input ---


def _detail(response: Any) -> str:
    return json.dumps(response.json())


def test_bad_requests_are_clear_422s(client: TestClient, world: World, labelled: dict) -> None:
    """Unknown operations and parameters, small polygons, missing inputs, unknown structures, boxes outside the
    volume, too many inputs, missing parts and unreadable meta are 4xx with a message, never 500."""
    headers, scan_id = world.headers["annotator"], labelled["scan"]["id"]
    liver = labelled["masks"]["liver"]

    def send(operation: str, structure: str, params: dict[str, Any], masks: dict[str, np.ndarray]) -> Any:
        return post_operation(client, headers, scan_id, operation, structure, params, masks)

    cases = [
        (send("explode", "liver", {}, {"liver": liver}), "explode"),
        (send("margin", "liver", {"mm": 3, "iterations": 2}, {"liver": liver}), "iterations"),
        (send("margin", "liver", {"mm": 1e9}, {"liver": liver}), "mm"),
        (
            send("scissors", "liver", {"polygon": [[1, 1], [5, 5]], "axis": 2, "keep": "inside"}, {"liver": liver}),
            "polygon",
        ),
        (send("margin", "liver", {"mm": 3}, {"spleen": liver}), "reads structure 'liver'"),
        (send("logical", "liver", {"op": "add", "source": "spleen"}, {"liver": liver}), "'spleen'"),
        (send("margin", "kidney_of_doom", {"mm": 3}, {"liver": liver}), "not in the project's label schema"),
        (send("margin", "liver", {"mm": 3}, {"liver": liver, "kidney_of_doom": liver}), "kidney_of_doom"),
        (send("interpolate", "liver", {"axis": 2, "key_slices": [3, 99]}, {"liver": liver}), "outside the volume"),
        (send("islands", "liver", {"mode": "keep_clicked", "voxel": [0, 0, 0]}, {"liver": liver}), "not part"),
        (send("logical", "liver", {"op": "copy", "source": "liver"}, {"liver": liver}), "must differ"),
    ]
    for response, needle in cases:
        assert response.status_code == 422, response.text
        assert needle in _detail(response), (needle, response.text)

    part = ("p0", chunks.encode_box(np.ones((4, 4, 4), bool)), "application/octet-stream")
    outside = {"structure": "liver", "origin": [62, 0, 0], "size": [4, 4, 4], "part": "p0"}
    too_many = [{"structure": "liver", "origin": [0, 0, 0], "size": [0, 0, 0]}] * 9
    no_part = {"structure": "liver", "origin": [0, 0, 0], "size": [4, 4, 4], "part": "nope"}
    for inputs, needle in ((outside, "outside the volume"), (no_part, "'nope'"), (too_many, "inputs")):
        meta = {"operation": "margin", "structure": "liver", "params": {"mm": 3}}
        meta["inputs"] = inputs if isinstance(inputs, list) else [inputs]
        response = client.post(
            f"/api/scans/{scan_id}/operations",
            headers=headers,
            data={"meta": json.dumps(meta)},
            files={"p0": part},
        )
        assert response.status_code == 422 and needle in _detail(response), response.text
    bad_bytes = {"structure": "liver", "origin": [0, 0, 0], "size": [40, 40, 20], "part": "p0"}
    meta = {"operation": "margin", "structure": "liver", "params": {"mm": 3}, "inputs": [bad_bytes]}
    response = client.post(
        f"/api/scans/{scan_id}/operations", headers=headers, data={"meta": json.dumps(meta)}, files={"p0": part}
    )
    assert response.status_code == 422, response.text
    for data in ({}, {"meta": "{not json"}, {"meta": "[]"}):
        response = client.post(f"/api/scans/{scan_id}/operations", headers=headers, data=data, files={"p0": part})
        assert response.status_code == 422, response.text


def test_openapi_documents_the_request_and_the_result(client: TestClient) -> None:
    """The multipart meta and the result are typed components, for the frontend's generated types."""
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    for name in ("OperationRequest", "OperationInput", "MarginParams", "ScissorsParams", "OperationResult"):
        assert name in schemas, name
    body = document["paths"]["/api/scans/{scan_id}/operations"]["post"]["requestBody"]
    meta = body["content"]["multipart/form-data"]["schema"]["properties"]["meta"]
    assert meta == {"$ref": "#/components/schemas/OperationRequest"}
    assert set(schemas["OperationRequest"]["discriminator"]["mapping"]) == {
        "interpolate",
        "margin",
        "islands",
        "smooth",
        "fill_holes",
        "logical",
        "scissors",
        "statistics",
    }
