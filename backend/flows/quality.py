"""Quality use cases: open multi-reader sets, submit a reading, rerun QA, resolve a finding (each one transaction).

Fusion is a job: `flows.jobs.launch_fusion`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.models import Project, QAFinding, ReaderSet, Scan, User
from backend.quality import service as quality


def create_reader_sets(
    db: Session,
    project: Project,
    *,
    scan_ids: Sequence[int] | None = None,
    sample_fraction: float | None = None,
    readers: Sequence[int] | None = None,
    n_readers: int | None = None,
    seed: int = 0,
    actor: User,
) -> list[ReaderSet]:
    """Open blinded reader sets (lead) on chosen scans or a seeded random fraction, readers chosen or picked."""
    created = quality.create_reader_sets(
        db,
        project,
        actor,
        scan_ids=scan_ids,
        sample_fraction=sample_fraction,
        readers=readers,
        n_readers=n_readers,
        seed=seed,
    )
    db.commit()
    return created


def submit_reading(db: Session, blobs: BlobStore, reader_set: ReaderSet, version_id: int, *, actor: User) -> ReaderSet:
    """A reader submits their version; the last submission computes the agreement."""
    submitted = quality.submit(db, blobs, reader_set, actor, version_id)
    db.commit()
    return submitted


def rerun_qa(db: Session, blobs: BlobStore, scan: Scan, version_id: int | None, *, actor: User) -> list[QAFinding]:
    """Run the QA rules now on a version of the scan (default: its head); that version's open findings."""
    findings = quality.run_qa_head(db, blobs, scan, version_id, actor)
    db.commit()
    return findings


def set_finding_status(db: Session, finding: QAFinding, status: str, *, actor: User, role: str) -> QAFinding:
    """Resolve, dismiss (reviewers and leads) or reopen a QA finding."""
    changed = quality.set_finding_status(db, finding, status, actor, role)
    db.commit()
    return changed
