"""Agreement of a reader set: pairwise Dice and NSD per structure, the threshold check and adjudication."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.blobstore import BlobStore
from backend.evaluation import metrics
from backend.imaging import fusion
from backend.labels import service as labels
from backend.models import Project, ReaderSet, ReaderSetMember, Scan, User
from backend.projects import service as projects
from backend.quality.service.settings import agreement_threshold, quality_settings
from backend.workflow import service as workflow


def _nsd_metric(tolerance_mm: float) -> fusion.SurfaceMetric:
    """Area-weighted NSD (backend.evaluation.metrics, Nikolov et al.) at a tolerance."""

    def nsd(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> float | None:
        if not a.any() or not b.any():
            return None
        box = metrics.union_box(a, b)
        assert box is not None
        lo, hi = box
        region = (slice(lo[0], hi[0] + 1), slice(lo[1], hi[1] + 1), slice(lo[2], hi[2] + 1))
        return metrics.normalized_surface_dice(metrics.surface_distances(a[region], b[region], spacing), tolerance_mm)

    return nsd


def compute_agreement(
    db: Session, blobs: BlobStore, scan: Scan, version_ids: Sequence[int], project: Project
) -> dict[str, Any]:
    """Per structure: mean pairwise Dice and area-weighted NSD of the versions, and whether it is below threshold.

    Structures missing from any version are reported with dice null. Structures whose masks are identical in
    every version (same manifest digest) get Dice 1 without decoding.
    """
    versions = [labels.get_version(db, vid) for vid in version_ids]
    structures = projects.structures_of(db, scan.project_id)
    tolerance = float(
        quality_settings(project).get("multi_reader", {}).get("nsd_tolerance_mm", metrics.DEFAULT_NSD_TOLERANCE_MM)
    )
    nsd = _nsd_metric(tolerance)
    spacing = (float(scan.spacing[0]), float(scan.spacing[1]), float(scan.spacing[2]))
    rows = [{e.structure_id: e for e in v.structures} for v in versions]
    out: dict[str, Any] = {}
    for structure in structures:
        threshold = agreement_threshold(project, structure.name)
        entries = [row.get(structure.id) for row in rows]
        if any(e is None or e.status != "present" for e in entries):
            out[structure.name] = {
                "dice": None,
                "nsd": None,
                "pairs": [],
                "threshold": threshold,
                "below_threshold": False,
                "note": "missing in at least one reader's version",
            }
            continue
        present = [e for e in entries if e is not None]
        if len({e.manifest_digest for e in present}) == 1:
            identical = present[0].voxel_count > 0
            pair_rows = [
                {"a": a.id, "b": b.id, "dice": 1.0, "nsd": 1.0 if identical else None}
                for i, a in enumerate(versions)
                for b in versions[i + 1 :]
            ]
            mean_dice, mean_nsd = 1.0, (1.0 if identical else None)
        else:
            masks = [labels.read_mask(blobs, scan, e) for e in present]
            result = fusion.pairwise_agreement(masks, spacing, nsd=nsd)
            pair_rows = [
                {"a": versions[p.i].id, "b": versions[p.j].id, "dice": p.dice, "nsd": p.nsd} for p in result.pairs
            ]
            mean_dice, mean_nsd = result.mean_dice, result.mean_nsd
        out[structure.name] = {
            "dice": mean_dice,
            "nsd": mean_nsd,
            "nsd_tolerance_mm": tolerance,
            "nsd_definition": metrics.NSD_DEFINITION,
            "pairs": pair_rows,
            "threshold": threshold,
            "below_threshold": mean_dice < threshold,
        }
    return out


def below_threshold(reader_set: ReaderSet) -> list[str]:
    """Structures of a set whose agreement is below the project's threshold."""
    return sorted(name for name, row in (reader_set.agreement or {}).items() if row.get("below_threshold"))


def complete(
    db: Session, blobs: BlobStore, reader_set: ReaderSet, members: Sequence[ReaderSetMember], actor: User
) -> None:
    """Score a set every reader has handed in; low agreement sends the scan to adjudication."""
    scan = db.get(Scan, reader_set.scan_id)
    project = db.get(Project, reader_set.project_id)
    assert scan is not None and project is not None
    version_ids = [m.version_id for m in members if m.version_id is not None]
    reader_set.agreement = compute_agreement(db, blobs, scan, version_ids, project)
    reader_set.completed_at = datetime.now(UTC)
    low = below_threshold(reader_set)
    reader_set.status = "adjudication" if low else "complete"
    db.flush()
    audit.record(
        db,
        actor_user_id=actor.id,
        action="reader_set.complete",
        entity_type="reader_set",
        entity_id=reader_set.id,
        project_id=reader_set.project_id,
        scan_id=reader_set.scan_id,
        details={"status": reader_set.status, "below_threshold": low, "version_ids": version_ids},
    )
    if low:
        _send_to_adjudication(db, scan, actor, reader_set)


def _send_to_adjudication(db: Session, scan: Scan, actor: User | None, reader_set: ReaderSet) -> None:
    """Move the scan's task to 'adjudication' (a transition row and a `task.adjudicate` audit event)."""
    low = below_threshold(reader_set)
    reason = f"reader set {reader_set.id}: agreement below threshold for {', '.join(low)}"
    workflow.adjudicate(db, scan, actor_user_id=actor.id if actor else None, reason=reason)
    db.flush()
