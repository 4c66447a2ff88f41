"""Attention: where ≥ 2 model predictions of a scan disagree, doubt or overlap -> maps and priorities."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore, get_blob_store
from backend.core.db import session_scope
from backend.core.errors import InvalidInput
from backend.imaging import softmaps
from backend.jobs import service as jobs
from backend.models import Job
from backend.projects import service as projects
from backend.registry import service as registry
from backend.registry.service.attention import axial_slice_count
from backend.scans import service as scans
from worker.models.attention import (
    AttentionThresholds,
    attention_maps,
    default_forbidden_overlaps,
    disagreement_priority,
)
from worker.models.inference import dequantise_unit
from worker.pipelines import common


def run(job_id: int) -> None:
    """Compute and store the attention maps of one scan."""
    common.run_claimed(job_id, _run)


def _pending_preannotations(db: Session, scan_id: int, before: datetime) -> list[int]:
    """The scan's pre-annotation jobs launched before this attention job and still queued or running."""
    rows = db.scalars(
        select(Job.id)
        .where(
            Job.scan_id == scan_id,
            Job.kind == "preannotate",
            Job.status.in_(jobs.ACTIVE),
            Job.created_at <= before,
        )
        .order_by(Job.id)
    )
    return [int(i) for i in rows]


def _load_map(blobs: BlobStore, entry: dict[str, Any]) -> np.ndarray:
    """A stored probability map on the full scan grid, as float32 in [0, 1] (its box placed, zeros around it)."""
    return dequantise_unit(softmaps.decode_soft_map(blobs.get_bytes(entry["probability"]), entry))


def _run(claimed: common.Claimed) -> None:
    blobs = get_blob_store()
    reporter = common.Reporter(claimed)
    with session_scope() as db:
        job = common.owned_job(db, claimed)
        if job.scan_id is None:
            raise InvalidInput("the scan of this job was deleted")
        scan = scans.get_scan(db, job.scan_id)
        waiting = _pending_preannotations(db, scan.id, job.created_at)
        if waiting:
            # Launched together with the pre-annotations (the demo, `maskloop attention` right after
            # `maskloop preannotate`): wait for them rather than compute over the predictions that exist so far.
            raise common.Deferred(f"waiting for the pre-annotation jobs {waiting} of {scan.case_id}")
        wanted = job.params.get("model_version_ids") or None
        predictions = registry.latest_predictions(db, scan.id, wanted)
        if len(predictions) < 2:
            raise InvalidInput(
                "attention needs predictions of at least two model versions; "
                f"scan {scan.case_id} has {len(predictions)}"
            )
        schema = projects.structures_of(db, scan.project_id)
        parents = {s.name: s.inside for s in schema if s.inside}
        by_name = {s.name: s for s in schema}
        entries: dict[str, list[dict[str, Any]]] = {}
        for prediction in predictions:
            for name, maps in prediction.maps.items():
                entries.setdefault(name, []).append(dict(maps))
        model_version_ids = [p.model_version_id for p in predictions]
        thresholds = AttentionThresholds(**job.params.get("thresholds", {}))
        axial_slices = axial_slice_count(scan.shape, scan.affine)
    names = [name for name, found in entries.items() if len(found) >= 2]
    if not names:
        raise InvalidInput("the predictions share no structure")
    reporter.update(10, "loading probability maps", force=True)
    probabilities = {name: [_load_map(blobs, entry) for entry in entries[name]] for name in names}
    reporter.update(40, "computing attention", force=True)
    results = attention_maps(probabilities, names, default_forbidden_overlaps(names, parents), thresholds)
    reporter.update(80, "storing maps", force=True)
    with session_scope() as db:
        job = common.closing_job(db, claimed)
        scan = scans.get_scan(db, job.scan_id or 0)
        stored = registry.store_attention(
            db,
            blobs,
            scan,
            [
                registry.AttentionInput(
                    structure=by_name[name],
                    mask=result.mask,
                    inconsistency_voxels=result.inconsistency_voxels,
                    uncertainty_voxels=result.uncertainty_voxels,
                    overlap_voxels=result.overlap_voxels,
                    priority=disagreement_priority(result, axial_slices),
                )
                for name, result in results.items()
            ],
            job_id=job.id,
            model_version_ids=model_version_ids,
        )
        jobs.succeed(
            db,
            job,
            {
                "model_version_ids": model_version_ids,
                "structures": {
                    name: {"attention_voxels": row.attention_voxels, "priority": row.priority}
                    for name, row in zip(results, stored, strict=True)
                },
            },
            message=f"attention for {len(stored)} structures",
        )
