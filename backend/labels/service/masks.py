"""Masks of a version: chunk manifests (cached by content), whole masks, the flattened map and paint order."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.errors import InvalidInput
from backend.imaging import chunks
from backend.imaging.chunks import MaskManifest
from backend.models import LabelVersion, LabelVersionStructure, Scan, Structure
from backend.projects import service as projects


def scan_shape(scan: Scan) -> tuple[int, int, int]:
    """The scan's voxel grid as a shape tuple."""
    return (int(scan.shape[0]), int(scan.shape[1]), int(scan.shape[2]))


def volume_ml(voxels: int, scan: Scan) -> float:
    """Volume in millilitres of a voxel count in this scan's geometry."""
    return voxels * scan.voxel_volume_mm3 / 1000.0


@lru_cache(maxsize=4096)
def _manifest_from_bytes(data: bytes) -> MaskManifest:
    return MaskManifest.from_bytes(data)


def load_manifest(blobs: BlobStore, digest: str) -> MaskManifest:
    """Read a mask manifest (immutable, so parsed manifests are cached by content)."""
    return _manifest_from_bytes(blobs.get_bytes(digest))


def entries_by_structure(version: LabelVersion | None) -> dict[int, LabelVersionStructure]:
    """A version's rows by structure id (none for no version)."""
    return {} if version is None else {entry.structure_id: entry for entry in version.structures}


def read_mask(blobs: BlobStore, scan: Scan, entry: LabelVersionStructure) -> np.ndarray:
    """The full boolean mask of one structure of a version (all-false when missing)."""
    if entry.status != "present" or not entry.manifest_digest:
        return np.zeros(scan_shape(scan), dtype=bool)
    return chunks.assemble_mask(load_manifest(blobs, entry.manifest_digest), blobs.get_bytes)


def default_paint_order(structures: Sequence[Structure]) -> list[Structure]:
    """Schema order with every structure painted after the one it lies inside, so sub-structures stay visible."""
    by_name = {s.name: s for s in structures}

    def depth(structure: Structure) -> int:
        level, seen = 0, set()
        while structure.inside and structure.inside in by_name and structure.name not in seen:
            seen.add(structure.name)
            structure = by_name[structure.inside]
            level += 1
        return level

    return sorted(structures, key=lambda s: (depth(s), s.position))


def combined_map(
    db: Session,
    blobs: BlobStore,
    version: LabelVersion,
    order: Sequence[str] | None = None,
    *,
    memory_order: Literal["C", "F"] = "C",
) -> tuple[np.ndarray, list[Structure]]:
    """Flatten a version into one integer map, later structures painted over earlier ones (an export, lossy).

    `memory_order` "F" matches a decoded NIfTI's layout, so comparing the two is one linear pass.
    """
    scan = db.get(Scan, version.scan_id)
    assert scan is not None
    structures = projects.structures_of(db, scan.project_id)
    if order:
        painted = [projects.find_structure(structures, name) for name in order]
        if len({s.id for s in painted}) != len(painted):
            raise InvalidInput("a structure appears twice in the paint order")
    else:
        painted = default_paint_order(structures)
    dtype = np.uint8 if max(s.label_value for s in structures) < 256 else np.uint16
    out = np.zeros(scan_shape(scan), dtype=dtype, order=memory_order)
    entries = entries_by_structure(version)
    for structure in painted:
        entry = entries.get(structure.id)
        if entry is None or entry.status != "present" or not entry.manifest_digest:
            continue
        manifest = load_manifest(blobs, entry.manifest_digest)
        for chunk_entry in manifest.entries:
            region = chunks.chunk_slices(chunk_entry.flat_index, manifest.shape, manifest.chunk)
            block = chunks.decode_chunk(blobs.get_bytes(chunk_entry.digest), out[region].shape)
            out[region][block] = structure.label_value
    return out, painted
