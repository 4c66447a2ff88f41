"""Reading label versions: by id, a structure's row, lineage, authors and the diff of two versions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.db import get_or_404
from backend.core.errors import InvalidInput, NotFound
from backend.imaging import chunks
from backend.labels.service.masks import entries_by_structure, load_manifest
from backend.models import LabelVersion, LabelVersionStructure, Scan, Structure, User
from backend.projects import service as projects


@dataclass(frozen=True)
class StructureDiff:
    """How one structure differs between two versions."""

    structure: str
    status_a: str
    status_b: str
    voxels_a: int
    voxels_b: int
    intersection: int
    added: int
    removed: int
    dice: float | None


def get_version(db: Session, version_id: int) -> LabelVersion:
    """A label version by id."""
    return get_or_404(db, LabelVersion, version_id, "label version")


def structure_entry(db: Session, version: LabelVersion, name: str) -> tuple[Structure, LabelVersionStructure]:
    """The schema structure and this version's row for it."""
    scan = db.get(Scan, version.scan_id)
    assert scan is not None
    structure = projects.find_structure(projects.structures_of(db, scan.project_id), name)
    for entry in version.structures:
        if entry.structure_id == structure.id:
            return structure, entry
    raise NotFound(f"version {version.id} has no entry for {name!r}")


def diff_versions(db: Session, blobs: BlobStore, a: LabelVersion, b: LabelVersion) -> list[StructureDiff]:
    """Per-structure changed voxels and Dice between two versions of one scan (decodes only differing chunks).

    Dice policy (PanTS): 1.0 when both masks are empty, 0.0 when exactly one is; None when either is missing.
    """
    if a.scan_id != b.scan_id:
        raise InvalidInput("versions of different scans cannot be compared")
    scan = db.get(Scan, a.scan_id)
    assert scan is not None
    entries_a, entries_b = entries_by_structure(a), entries_by_structure(b)
    out = []
    for structure in projects.structures_of(db, scan.project_id):
        ea, eb = entries_a.get(structure.id), entries_b.get(structure.id)
        status_a = ea.status if ea else "missing"
        status_b = eb.status if eb else "missing"
        count_a = ea.voxel_count if ea else 0
        count_b = eb.voxel_count if eb else 0
        if ea is None or eb is None or "missing" in (status_a, status_b):
            inter, dice = 0, None
        else:
            if ea.manifest_digest == eb.manifest_digest:
                inter = count_a
            else:
                assert ea.manifest_digest and eb.manifest_digest
                inter = chunks.intersection_count(
                    load_manifest(blobs, ea.manifest_digest),
                    load_manifest(blobs, eb.manifest_digest),
                    blobs.get_bytes,
                )
            dice = 1.0 if count_a + count_b == 0 else 2.0 * inter / (count_a + count_b)
        out.append(
            StructureDiff(
                structure=structure.name,
                status_a=status_a,
                status_b=status_b,
                voxels_a=count_a,
                voxels_b=count_b,
                intersection=inter,
                added=count_b - inter,
                removed=count_a - inter,
                dice=dice,
            )
        )
    return out


def list_versions(db: Session, scan: Scan) -> list[LabelVersion]:
    """Every version of a scan, oldest first (the lineage graph via parent ids)."""
    return list(db.scalars(select(LabelVersion).where(LabelVersion.scan_id == scan.id).order_by(LabelVersion.id)))


def lineage(db: Session, version: LabelVersion) -> list[LabelVersion]:
    """The chain from a version back to its root, newest first."""
    chain = [version]
    while chain[-1].parent_id is not None:
        chain.append(get_version(db, chain[-1].parent_id))
    return chain


def authors_of(db: Session, versions: Sequence[LabelVersion]) -> dict[int, User]:
    """Users who authored the given versions, by id."""
    ids = {v.author_user_id for v in versions if v.author_user_id is not None}
    if not ids:
        return {}
    return {user.id: user for user in db.scalars(select(User).where(User.id.in_(ids)))}
