"""Export: write the requested dataset layout in a temporary folder, pack it, store the archive by content.

The plan (versions chosen per scan) is read in one short session; the files are written outside any
transaction with a progress report per scan (also the heartbeat and the cancellation check); the archive is
stored content-addressed before the job row points at it. A rerun after a crash writes the export again.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from backend.core.blobstore import get_blob_store
from backend.core.db import session_scope
from backend.core.errors import InvalidInput
from backend.exports import service as exports
from backend.jobs import service as jobs
from backend.projects import service as projects
from worker.pipelines import common


def run(job_id: int) -> None:
    """Run the export job."""
    common.run_claimed(job_id, _run)


def _run(claimed: common.Claimed) -> None:
    blobs = get_blob_store()
    with session_scope() as db:
        job = common.owned_job(db, claimed)
        if job.kind != "export":
            raise InvalidInput(f"job {job.id} is a {job.kind} job, not an export")
        project = projects.get_project(db, job.project_id)
        plan = exports.plan_export(db, project, dict(job.params), seed=f"job-{job.id}")
    reporter = common.Reporter(claimed)
    reporter.update(1, f"exporting {len(plan.cases)} scans as {plan.format}", force=True)

    def tick(done: int, total: int, case_id: str) -> None:
        reporter.update(1 + 89 * done / max(1, total), f"{done}/{total} scans written ({case_id})")
        if reporter.should_stop():
            raise common.JobAbandoned(f"job {claimed.job_id} was cancelled")

    with tempfile.TemporaryDirectory(prefix="maskloop-export-") as tmp:
        # The folder's name is the archive's top level (DatasetXXX_Name for nnU-Net).
        root = Path(tmp) / "out" / exports.dataset_folder_name(plan)
        manifest = exports.write_export(blobs, plan, root, progress=tick)
        reporter.update(92, "packing the archive", force=True)
        archive = Path(tmp) / "export.tar.gz"
        file_count = exports.archive_folder(root, archive)
        digest = blobs.put_file(archive)
        size = archive.stat().st_size
    with session_scope() as db:
        job = common.closing_job(db, claimed)
        jobs.succeed(
            db,
            job,
            {
                "archive_digest": digest,
                "archive_bytes": size,
                "archive_name": f"{root.name}-job{job.id}.tar.gz",
                "file_count": file_count,
                **exports.export_summary(manifest),
            },
            message=f"exported {len(manifest['scans'])} scans ({file_count} files)",
        )
