"""Attention maps with their priorities, and the ranked list of what a radiologist should revise first.

A priority is computed by the attention step (model disagreement relative to the structure's predicted volume, see
``worker.models.attention``) and is orientation-free: it uses the number of axial slices in RAS
(:func:`axial_slice_count`), never the stored third axis. Without one, the attention volume per RAS axial slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.blobstore_batch import blob_batch
from backend.core.errors import NotFound
from backend.imaging import chunks
from backend.models import AttentionMap, Scan, ScanTask, Structure
from backend.workflow import service as workflow


@dataclass(frozen=True)
class AttentionInput:
    """One structure's attention result to store."""

    structure: Structure
    mask: np.ndarray
    inconsistency_voxels: int
    uncertainty_voxels: int
    overlap_voxels: int
    priority: float | None = None


def axial_slice_count(shape: Sequence[int], affine: Sequence[Sequence[float]]) -> int:
    """Number of axial slices in RAS: the extent of the voxel axis most aligned with superior-inferior."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(matrix, axis=0)
    alignment = np.abs(matrix[2]) / np.where(norms > 0, norms, 1.0)
    return max(1, int(shape[int(np.argmax(alignment))]))


def store_attention(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    results: Sequence[AttentionInput],
    *,
    job_id: int | None,
    model_version_ids: Sequence[int],
) -> list[AttentionMap]:
    """Replace the scan's attention maps (derived data, recomputed from predictions) and their priorities."""
    stored = []
    # One batch for every map's chunks: written on the I/O threads, each folder fsynced once before the rows commit.
    batch = blob_batch(blobs)
    try:
        manifests = [chunks.build_manifest(item.mask, batch.put) for item in results]
        digests = [batch.put(manifest.to_bytes()) for manifest in manifests]
        batch.commit()
    except BaseException:
        batch.abort()
        raise
    for item, manifest, digest in zip(results, manifests, digests, strict=True):
        voxels = manifest.voxel_count
        row = db.scalar(
            select(AttentionMap).where(AttentionMap.scan_id == scan.id, AttentionMap.structure_id == item.structure.id)
        )
        if row is None:
            row = AttentionMap(project_id=scan.project_id, scan_id=scan.id, structure_id=item.structure.id)
            db.add(row)
        row.job_id = job_id
        row.manifest_digest = digest
        row.attention_voxels = voxels
        row.inconsistency_voxels = item.inconsistency_voxels
        row.uncertainty_voxels = item.uncertainty_voxels
        row.overlap_voxels = item.overlap_voxels
        row.priority = (
            float(item.priority) if item.priority is not None else voxels / axial_slice_count(scan.shape, scan.affine)
        )
        row.model_version_ids = list(model_version_ids)
        stored.append(row)
    db.flush()
    top = db.scalar(select(func.max(AttentionMap.priority)).where(AttentionMap.scan_id == scan.id))
    workflow.update_priority(db, scan.id, float(top or 0.0))
    return stored


def attention_for(db: Session, scan_id: int, structure_id: int) -> AttentionMap:
    """The attention map of one structure of a scan."""
    row = db.scalar(
        select(AttentionMap).where(AttentionMap.scan_id == scan_id, AttentionMap.structure_id == structure_id)
    )
    if row is None:
        raise NotFound("no attention map for this structure; run the attention step on ≥ 2 model predictions")
    return row


def _not_approved() -> ColumnElement[bool]:
    """Scans whose task is not approved (an approved scan is done: it leaves the ranking until reopened)."""
    return or_(ScanTask.state.is_(None), ScanTask.state != "approved")


def ranked_priorities(
    db: Session, project_id: int, *, offset: int, limit: int, structure_id: int | None = None
) -> tuple[list[tuple[AttentionMap, Scan, Structure]], int]:
    """(scan, structure) pairs by descending priority: where a radiologist's look is worth most (approved scans
    left out)."""
    query = (
        select(AttentionMap, Scan, Structure)
        .join(Scan, Scan.id == AttentionMap.scan_id)
        .join(Structure, Structure.id == AttentionMap.structure_id)
        .outerjoin(ScanTask, ScanTask.scan_id == Scan.id)
        .where(
            AttentionMap.project_id == project_id,
            or_(AttentionMap.attention_voxels > 0, AttentionMap.priority > 0),
            _not_approved(),
        )
    )
    if structure_id is not None:
        query = query.where(AttentionMap.structure_id == structure_id)
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = db.execute(query.order_by(AttentionMap.priority.desc(), AttentionMap.id).offset(offset).limit(limit))
    return [(a, s, st) for a, s, st in rows.all()], int(total)


def ranked_scans(db: Session, project_id: int, *, offset: int, limit: int) -> list[tuple[int, str, float]]:
    """Scans by total attention priority (summed over structures); approved scans left out."""
    rows = db.execute(
        select(Scan.id, Scan.case_id, func.sum(AttentionMap.priority).label("score"))
        .join(AttentionMap, AttentionMap.scan_id == Scan.id)
        .outerjoin(ScanTask, ScanTask.scan_id == Scan.id)
        .where(AttentionMap.project_id == project_id, _not_approved())
        .group_by(Scan.id, Scan.case_id)
        .order_by(func.sum(AttentionMap.priority).desc(), Scan.id)
        .offset(offset)
        .limit(limit)
    )
    return [(int(i), str(c), float(s)) for i, c, s in rows.all()]
