"""Fusion: a reader set's versions fused (majority vote or STAPLE) into a `fusion` label version (cpu queue).

The plan (which structures need decoding, their manifest digests) is read in one short session; the masks are
decoded and fused outside any transaction with a progress report per structure (also the heartbeat and the
cancellation check); the version, the set's `fused` status, its QA findings and the job's success are written in
one transaction. Idempotent: the version carries the idempotency key `job-<id>`, so a rerun of the same job (a
redelivered task, a re-claimed job after a lost worker) returns the version it already wrote.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from backend.core.blobstore import get_blob_store
from backend.core.db import session_scope
from backend.core.errors import InvalidInput
from backend.jobs import service as jobs
from backend.models import LabelVersion, ReaderSet, User
from backend.quality import service as quality
from worker.pipelines import common


def run(job_id: int) -> None:
    """Run (or finish, if a previous attempt already wrote the version) the fusion job."""
    common.run_claimed(job_id, _run)


def _inputs(db: Session, claimed: common.Claimed) -> tuple[ReaderSet, User, str]:
    job = common.owned_job(db, claimed)
    if job.kind != "fuse":
        raise InvalidInput(f"job {job.id} is a {job.kind} job, not a fusion")
    reader_set = quality.get_reader_set(db, int(job.params["reader_set_id"]))
    actor = db.get(User, job.created_by) if job.created_by is not None else None
    if actor is None:
        raise InvalidInput("the user who asked for this fusion was deleted")
    return reader_set, actor, str(job.params.get("method", "majority"))


def _result(version: LabelVersion, reader_set: ReaderSet, method: str, fused: int | None) -> dict[str, object]:
    return {
        "reader_set_id": reader_set.id,
        "label_version_id": version.id,
        "method": method,
        "structures_fused": fused,
        "is_head": not version.is_branch,
    }


def _run(claimed: common.Claimed) -> None:
    blobs = get_blob_store()
    key = f"job-{claimed.job_id}"
    with session_scope() as db:
        reader_set, actor, method = _inputs(db, claimed)
        existing = quality.fusion_version_for_key(db, reader_set, key)
        if existing is not None:  # a previous attempt committed the version but died before finishing the job
            job = common.owned_job(db, claimed)
            fused = job.result.get("structures_fused") if job.result else None
            jobs.succeed(db, job, _result(existing, reader_set, method, fused), message="already fused")
            return
        plan = quality.plan_fusion(db, reader_set, actor, method)
    reporter = common.Reporter(claimed)
    total = len(plan.inputs)
    reporter.update(2, f"fusing {total} structures ({method}) of reader set {plan.reader_set_id}", force=True)

    def tick(done: int, count: int, name: str) -> None:
        reporter.update(2 + 88 * done / max(1, count), f"{done}/{count} structures fused ({name})")
        if reporter.should_stop():
            raise common.JobAbandoned(f"job {claimed.job_id} was cancelled")

    result = quality.compute_fusion(blobs, plan, progress=tick)
    reporter.update(92, "writing the fusion version", force=True)
    with session_scope() as db:
        job = common.closing_job(db, claimed)
        reader_set, actor, method = _inputs(db, claimed)
        version = quality.store_fusion(db, blobs, reader_set, actor, plan, result, idempotency_key=key)
        jobs.succeed(
            db,
            job,
            _result(version, reader_set, method, total),
            message=f"fused {total} structures into version {version.id}",
        )
