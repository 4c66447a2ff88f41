"""Erasing one case: every row that holds its data, and the blobs no other row uses.

Rows: the scan and what cascades from it (label versions and their masks, drafts, predictions, attention maps,
tasks, reviews, comments); the results of the jobs that ran on it; and the archives of the project's exports made
after it was imported (an archive may hold the case, and its manifest is inside the archive, so every such archive
goes; its job row stays, saying it was erased).

Blobs: the digests those rows named (chunks inside manifests included) are candidates. After the rows are gone,
a candidate that no remaining row references is deleted unless it was written or reused within `grace_s` (a
writer may be reusing it right now: it goes at the next gc instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.errors import NotFound
from backend.imaging.chunks import MaskManifest
from backend.models import AttentionMap, Job, LabelDraft, LabelVersion, LabelVersionStructure, Prediction, Scan
from backend.storage.service import json_digests, mark

ERASED = {"erased": True, "note": "the case this job touched was erased on request"}


@dataclass
class CaseContents:
    """What one case holds: row counts and the blob digests its rows name."""

    scan_id: int
    project_id: int
    versions: int = 0
    drafts: int = 0
    predictions: int = 0
    jobs: int = 0
    export_archives: int = 0
    digests: set[str] = field(default_factory=set)


@dataclass
class SweepReport:
    """The candidate blobs of an erased case: removed now, kept for gc (young), or still used by other rows."""

    removed: int = 0
    removed_bytes: int = 0
    kept_young: int = 0
    still_used: int = 0


def _with_chunks(blobs: BlobStore, manifest_digest: str) -> set[str]:
    """A manifest's digest and the chunks it lists (just the digest when it cannot be read)."""
    try:
        entries = MaskManifest.from_bytes(blobs.get_bytes(manifest_digest)).entries
    except (NotFound, ValueError):
        return {manifest_digest}
    return {manifest_digest, *(entry.digest for entry in entries)}


def _export_jobs_after(db: Session, scan: Scan) -> list[Job]:
    """The project's export jobs created after the scan was: their archives may hold it."""
    query = select(Job).where(
        Job.project_id == scan.project_id, Job.kind == "export", Job.created_at >= scan.created_at
    )
    return [job for job in db.scalars(query) if isinstance(job.result, dict) and job.result.get("archive_digest")]


def collect(db: Session, blobs: BlobStore, scan: Scan) -> CaseContents:
    """Count a case's rows and gather every blob digest they name."""
    contents = CaseContents(scan_id=scan.id, project_id=scan.project_id, digests={scan.image_digest})
    version_ids = list(db.scalars(select(LabelVersion.id).where(LabelVersion.scan_id == scan.id)))
    contents.versions = len(version_ids)
    manifests = set(
        db.scalars(
            select(LabelVersionStructure.manifest_digest)
            .join(LabelVersion, LabelVersion.id == LabelVersionStructure.version_id)
            .where(LabelVersion.scan_id == scan.id, LabelVersionStructure.manifest_digest.is_not(None))
        )
    )
    manifests |= set(db.scalars(select(AttentionMap.manifest_digest).where(AttentionMap.scan_id == scan.id)))
    for digest in manifests:
        if digest:
            contents.digests |= _with_chunks(blobs, digest)
    drafts = list(db.scalars(select(LabelDraft.payload_digest).where(LabelDraft.scan_id == scan.id)))
    contents.drafts = len(drafts)
    contents.digests |= {d for d in drafts if d}
    for maps in db.scalars(select(Prediction.maps).where(Prediction.scan_id == scan.id)):
        contents.predictions += 1
        contents.digests |= set(json_digests(maps))
    for job in db.scalars(select(Job).where(Job.scan_id == scan.id)):
        contents.jobs += 1
        contents.digests |= set(json_digests(job.result))
    for job in _export_jobs_after(db, scan):
        contents.export_archives += 1
        contents.digests |= set(json_digests(job.result))
    return contents


def delete_rows(db: Session, scan: Scan) -> None:
    """Delete the case's rows (in the caller's transaction) and clear the results of the jobs that touched it."""
    for job in [*db.scalars(select(Job).where(Job.scan_id == scan.id)), *_export_jobs_after(db, scan)]:
        job.result = dict(ERASED)
        job.error = None
    # Versions name their parent with ON DELETE RESTRICT: unlink the chain, then the scan's cascade removes it.
    db.execute(update(LabelVersion).where(LabelVersion.scan_id == scan.id).values(parent_id=None))
    db.execute(update(Scan).where(Scan.id == scan.id).values(head_version_id=None))
    db.flush()
    db.execute(delete(Scan).where(Scan.id == scan.id))
    db.expunge(scan)


def sweep(db: Session, blobs: BlobStore, candidates: set[str], *, older_than: float) -> SweepReport:
    """Delete the candidates no row references any more, unless written or reused after `older_than`."""
    report = SweepReport()
    marked, _ = mark(db, blobs)
    for digest in sorted(candidates):
        if bytes.fromhex(digest) in marked:
            report.still_used += 1
            continue
        try:
            size = blobs.size(digest)  # not exists(): that is a writer's check and refreshes the blob's age
        except NotFound:
            continue
        if blobs.delete(digest, older_than=older_than):
            report.removed += 1
            report.removed_bytes += size
        else:
            report.kept_young += 1
    return report
