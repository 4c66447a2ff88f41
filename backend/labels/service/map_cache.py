"""Combined label maps of recent versions, kept in this process's memory for the next save on them.

A MONAI Label client (3D Slicer, OHIF) sends back a whole combined map; finding what it changed needs the combined
map of the version it was given, and composing that from 28 structures' chunks costs ~100–200 ms at 512×512×300.
A client saves again and again on the version its last save made, so each save leaves the new version's map here:
the base's map with only the patched boxes recomposed. A map is taken out while a request uses it (the taker may
change it; nobody else can see it) and put back when done, keyed by what it is made of (grid, paint order, label
values, mask digests) and kept only after the rows committed. Bounded by `label_map_cache_mb`; a miss composes
the map as before.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.config import get_settings
from backend.core.lru import BoundedLru
from backend.imaging import chunks
from backend.labels.service.masks import (
    combined_map,
    default_paint_order,
    entries_by_structure,
    load_manifest,
    scan_shape,
)
from backend.labels.service.saves import BoxPatch
from backend.models import LabelVersion, Scan, Structure
from backend.projects import service as projects

_cache: BoundedLru[np.ndarray] | None = None
_cache_lock = threading.Lock()

# What a map is made of, so a kept map can never be the wrong one (a rolled-back or deleted version's id may come
# back under SQLite): the grid, then each structure in paint order with its label value and mask manifest digest.
MapKey = tuple[tuple[int, int, int], tuple[tuple[int, str | None], ...]]


def _maps() -> BoundedLru[np.ndarray]:
    global _cache
    with _cache_lock:
        if _cache is None:
            _cache = BoundedLru(64, get_settings().label_map_cache_mb * 1024 * 1024)
        return _cache


def clear_combined_maps() -> None:
    """Forget every kept map (tests; settings changed)."""
    global _cache
    with _cache_lock:
        _cache = None


def _key(db: Session, version: LabelVersion) -> tuple[MapKey, list[Structure]]:
    scan = db.get(Scan, version.scan_id)
    assert scan is not None
    painted = default_paint_order(projects.structures_of(db, scan.project_id))
    entries = entries_by_structure(version)
    masks = tuple(
        (s.label_value, entry.manifest_digest if entry is not None and entry.status == "present" else None)
        for s in painted
        for entry in (entries.get(s.id),)
    )
    return (scan_shape(scan), masks), painted


def take_combined_map(db: Session, blobs: BlobStore, version: LabelVersion) -> tuple[np.ndarray, list[Structure]]:
    """The version's combined map in Fortran order (as combined_map paints it), the caller's own until kept again."""
    key, painted = _key(db, version)
    found = _maps().take(key)
    if found is not None:
        return found, painted
    label_map, _ = combined_map(db, blobs, version, memory_order="F")
    return label_map, painted


def keep_combined_map(db: Session, version: LabelVersion, label_map: np.ndarray) -> None:
    """Keep a version's combined map (exactly combined_map's, Fortran order) for the next request on it."""
    key, _ = _key(db, version)
    _maps().put(key, label_map, label_map.nbytes)


def keep_after_save(
    db: Session,
    blobs: BlobStore,
    base: LabelVersion,
    base_map: np.ndarray,
    version: LabelVersion,
    patches: Sequence[BoxPatch],
) -> None:
    """Turn the base's map into the map of `version` (the base with `patches` saved) and keep it.

    Outside the patches' boxes no mask changed, so neither did the map; inside them every structure is repainted
    in paint order from the new version's masks, so hidden overlaps and parts come out as combined_map paints them.
    A structure that changed without a patch (nothing does today) leaves the map unkept rather than wrong.
    """
    key, painted = _key(db, version)
    entries = entries_by_structure(version)
    before = entries_by_structure(base)
    patched = {patch.structure for patch in patches}
    for structure in painted:
        old, new = before.get(structure.id), entries.get(structure.id)
        digests = (old.manifest_digest if old else None, new.manifest_digest if new else None)
        if digests[0] != digests[1] and structure.name not in patched:
            return
    manifests = [
        (structure.label_value, load_manifest(blobs, entry.manifest_digest))
        for structure in painted
        if (entry := entries.get(structure.id)) is not None and entry.status == "present" and entry.manifest_digest
    ]
    for patch in patches:
        origin = patch.origin
        size = (int(patch.box.shape[0]), int(patch.box.shape[1]), int(patch.box.shape[2]))
        view = base_map[tuple(slice(o, o + s) for o, s in zip(origin, size, strict=True))]
        view[...] = 0
        for value, manifest in manifests:
            view[chunks.read_region(manifest, origin, size, blobs.get_bytes)] = value
    _maps().put(key, base_map, base_map.nbytes)
