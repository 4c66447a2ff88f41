"""Erasure of a case on request: its rows go in one transaction, then the blobs no other row uses."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.blobstore import BlobStore
from backend.models import Scan, User
from backend.storage import erasure


@dataclass(frozen=True)
class ErasureResult:
    """What an erasure removed: the case's rows and the fate of its blobs."""

    contents: erasure.CaseContents
    blobs: erasure.SweepReport


def erase_scan(db: Session, blobs: BlobStore, scan: Scan, *, actor: User | None, grace_s: float) -> ErasureResult:
    """Erase a case: delete its rows and clear what jobs and exports kept of it, record an audit event that
    names no patient data (ids and counts only), commit, then delete its blobs that no remaining row uses."""
    started = time.time()
    contents = erasure.collect(db, blobs, scan)
    erasure.delete_rows(db, scan)
    audit.record(
        db,
        actor_user_id=actor.id if actor is not None else None,
        action="scan.erase",
        entity_type="scan",
        entity_id=contents.scan_id,
        project_id=contents.project_id,
        scan_id=contents.scan_id,
        details={
            "versions": contents.versions,
            "drafts": contents.drafts,
            "predictions": contents.predictions,
            "jobs_cleared": contents.jobs,
            "export_archives_removed": contents.export_archives,
        },
    )
    db.commit()
    report = erasure.sweep(db, blobs, contents.digests, older_than=started - grace_s)
    return ErasureResult(contents=contents, blobs=report)
