"""Patch saves with small boxes inline in the meta JSON (base64 `data`) instead of a multipart part of their own:
saved exactly like a part, mixed freely with parts in one save; the old part-only form still works; a box with both
or neither, or with data that is not base64, is a clear 422."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.imaging import chunks
from tests.conftest import World
from tests.factories import post_patch, read_mask, small_phantom, upload_masks, upload_scan

pytestmark = [pytest.mark.parametrize("database", ["sqlite"], indirect=True)]


@pytest.fixture
def labelled(client: TestClient, world: World) -> dict[str, Any]:
    """A phantom scan with its ground truth imported as the first version."""
    phantom = small_phantom(seed=7)
    lead = world.headers["lead"]
    scan = upload_scan(client, lead, world.project.id, phantom, "inline-a")
    version = upload_masks(client, lead, scan["id"], phantom.masks, phantom.affine)
    return {"scan": scan, "version": version, "phantom": phantom}


def _save(client: TestClient, world: World, labelled: dict[str, Any], patches: list[dict[str, Any]], files: Any) -> Any:
    meta = {"base_version_id": labelled["version"]["id"], "message": "inline", "patches": patches}
    return client.post(
        f"/api/scans/{labelled['scan']['id']}/versions/patch",
        headers=world.headers["annotator"],
        data={"meta": json.dumps(meta)},
        files=files or None,
    )


def test_inline_and_part_boxes_save_exactly(client: TestClient, world: World, labelled: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    stroke = rng.random((9, 5, 1)) < 0.6
    block = rng.random((12, 10, 4)) < 0.5
    patches = [
        {
            "structure": "liver",
            "origin": [10, 12, 8],
            "size": list(stroke.shape),
            "encoding": "bits",
            "data": base64.b64encode(chunks.encode_box(stroke, "bits")).decode(),
        },
        {"structure": "spleen", "origin": [4, 5, 6], "size": list(block.shape), "encoding": "bits+gzip", "part": "b0"},
        {
            "structure": "kidney_left",
            "origin": [1, 1, 1],
            "size": [2, 2, 1],
            "encoding": "u8+gzip",
            "data": base64.b64encode(chunks.encode_box(np.ones((2, 2, 1), bool), "u8+gzip")).decode(),
        },
    ]
    files = {"b0": ("b0", chunks.encode_box(block, "bits+gzip"), "application/octet-stream")}
    response = _save(client, world, labelled, patches, files)
    assert response.status_code == 201, response.text
    new = response.json()["id"]
    headers = world.headers["annotator"]
    phantom = labelled["phantom"]
    for name, origin, box in (("liver", (10, 12, 8), stroke), ("spleen", (4, 5, 6), block)):
        expected = phantom.masks[name].copy()
        x, y, z = origin
        expected[x : x + box.shape[0], y : y + box.shape[1], z : z + box.shape[2]] = box
        assert np.array_equal(read_mask(client, headers, new, name), expected)
    kidney = read_mask(client, headers, new, "kidney_left")
    assert kidney[1:3, 1:3, 1].all()


def test_part_only_saves_still_work(client: TestClient, world: World, labelled: dict[str, Any]) -> None:
    box = np.ones((3, 3, 2), bool)
    response = post_patch(
        client,
        world.headers["annotator"],
        labelled["scan"]["id"],
        labelled["version"]["id"],
        [("liver", (2, 2, 2), box)],
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"part": "b0", "data": "AA=="}, "not both"),
        ({}, "not both"),
        ({"data": "not base64!"}, "not valid base64"),
        ({"data": "A" * 70_000}, "patch meta is invalid"),
        ({"data": base64.b64encode(b"\x00\x01").decode()}, "needs 1"),
    ],
)
def test_bad_inline_box_is_refused(
    client: TestClient, world: World, labelled: dict[str, Any], patch: dict[str, Any], message: str
) -> None:
    entry = {"structure": "liver", "origin": [0, 0, 0], "size": [2, 2, 2], "encoding": "bits", **patch}
    files = {"b0": ("b0", b"\x00", "application/octet-stream")}
    response = _save(client, world, labelled, [entry], files)
    assert response.status_code == 422, response.text
    assert message in response.text
    versions = client.get(f"/api/scans/{labelled['scan']['id']}/versions", headers=world.headers["annotator"]).json()
    assert len(versions) == 1
