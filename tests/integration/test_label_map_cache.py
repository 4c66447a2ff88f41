"""The combined maps the API keeps between MONAI Label saves: always exactly the map composed from the masks.

A client saves again and again on the version its previous save made; the map of that version is kept (its base's
map with only the patched boxes repainted) so the next save need not compose 28 structures. These tests compare
every kept map with a fresh composition, on versions whose masks overlap (a hidden structure under a painted one,
parts inside their parent), and check the saves themselves stay right with and without the cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.config import get_settings
from backend.labels import service as labels
from backend.labels.service import map_cache
from backend.projects import service as projects
from tests.conftest import World
from tests.factories import small_phantom, upload_masks, upload_scan
from tests.integration.test_monailabel_api import BASE, _combined, _decode, _digests, _put_label, _sample

pytestmark = pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    labels.clear_combined_maps()
    yield
    labels.clear_combined_maps()


@pytest.fixture
def overlapping(client: TestClient, world: World) -> dict[str, Any]:
    """A scan whose first version hides voxels: the stomach also covers part of the liver (painted over it or
    under it, by paint order) and the pancreas holds its head, body and tail."""
    phantom = small_phantom(seed=7)
    masks = dict(phantom.masks)
    liver = np.argwhere(masks["liver"])
    hidden = np.zeros_like(masks["liver"])
    hidden[tuple(liver[: len(liver) // 3].T)] = True
    masks["stomach"] = masks["stomach"] | hidden
    lead = world.headers["lead"]
    scan = upload_scan(client, lead, world.project.id, phantom, "case-a")
    version = upload_masks(client, lead, scan["id"], masks, phantom.affine)
    return {"scan": scan, "version": version, "phantom": phantom}


def _kept(db: Session, version_id: int) -> np.ndarray | None:
    """The map kept for a version (left in place), or None."""
    version = labels.get_version(db, version_id)
    key, _ = map_cache._key(db, version)
    return map_cache._maps().get(key)


def _composed(db: Session, blobs: BlobStore, version_id: int) -> np.ndarray:
    label_map, _ = labels.combined_map(db, blobs, labels.get_version(db, version_id), memory_order="F")
    return label_map


def test_each_save_keeps_the_exact_map_of_its_version(
    client: TestClient, world: World, overlapping: dict[str, Any], db: Session, blobs: BlobStore
) -> None:
    headers, affine = world.headers["annotator"], overlapping["phantom"].affine
    schema = {s.name: s.label_value for s in projects.structures_of(db, world.project.id)}
    _sample(client, headers, "slicer-a")
    version_id = int(overlapping["version"]["id"])
    label_map = _combined(client, headers, version_id).astype(np.uint8)
    rng = np.random.default_rng(3)
    edits = [
        ("liver", "erase"),  # uncovers the stomach voxels hidden under the liver (or the reverse)
        ("pancreas_head", "pancreas_body"),  # a part moved: the pancreas keeps them, its parts do not
        ("stomach", "liver"),
        (None, "spleen"),  # background painted as spleen
    ]
    for source, target in edits:
        where = np.argwhere(label_map == (schema[source] if source else 0))
        picked = where[rng.choice(len(where), size=min(25, len(where)), replace=False)]
        label_map[tuple(picked.T)] = 0 if target == "erase" else schema[target]
        response = _put_label(client, headers, "case-a", label_map, affine)
        assert response.status_code == 200, response.text
        version_id = int(response.json()["version"])
        kept = _kept(db, version_id)
        assert kept is not None, "the save left no map for its version"
        np.testing.assert_array_equal(kept, _composed(db, blobs, version_id))
        assert kept.flags.f_contiguous
    # The next save on the last version took its kept map (and left the new one's).
    assert len(map_cache._maps()) == 1


def test_a_refused_save_puts_the_map_back_unchanged(
    client: TestClient, world: World, overlapping: dict[str, Any], db: Session, blobs: BlobStore
) -> None:
    headers, affine = world.headers["annotator"], overlapping["phantom"].affine
    _sample(client, headers, "slicer-a")
    head = int(overlapping["version"]["id"])
    fetched = client.get(f"{BASE}/datastore/label", params={"label": "case-a", "tag": "final"}, headers=headers)
    assert fetched.status_code == 200, fetched.text
    label_map = _decode(fetched.content).astype(np.uint8)
    assert _kept(db, head) is not None  # the client's label download kept it
    np.testing.assert_array_equal(label_map, _composed(db, blobs, head))
    label_map[0, 0, 0] = 250  # names no structure: refused
    refused = _put_label(client, headers, "case-a", label_map, affine)
    assert refused.status_code == 422, refused.text
    kept = _kept(db, head)
    assert kept is not None
    np.testing.assert_array_equal(kept, _composed(db, blobs, head))


def test_saves_are_the_same_without_the_cache(
    client: TestClient, world: World, overlapping: dict[str, Any], db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "label_map_cache_mb", 0)
    labels.clear_combined_maps()
    headers, affine = world.headers["annotator"], overlapping["phantom"].affine
    schema = {s.name: s.label_value for s in projects.structures_of(db, world.project.id)}
    _sample(client, headers, "slicer-a")
    head = int(overlapping["version"]["id"])
    before = _digests(db, head)
    label_map = _combined(client, headers, head).astype(np.uint8)
    liver = np.argwhere(label_map == schema["liver"])[:40]
    label_map[tuple(liver.T)] = 0
    first = _put_label(client, headers, "case-a", label_map, affine)
    assert first.status_code == 200, first.text
    label_map[tuple(liver[:10].T)] = schema["liver"]
    second = _put_label(client, headers, "case-a", label_map, affine)
    assert second.status_code == 200, second.text
    after = _digests(db, int(second.json()["version"]))
    assert sorted(name for name in before if before[name] != after[name]) == ["liver"]
    assert after["liver"][1] == before["liver"][1] - 30
    assert len(map_cache._maps()) == 0
