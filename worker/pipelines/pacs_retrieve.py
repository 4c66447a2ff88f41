"""A `pacs` job: retrieve a series over WADO-RS into a scan (op 'retrieve', here) or send a version as DICOM SEG
over STOW-RS (op 'stow', worker/pipelines/pacs_stow.py). See backend.pacs.service.retrieval for the steps.

Begin (the job's source and original UIDs; a series already here ends the job as skipped), stream the instances
into a temporary folder with progress and read the first header (no transaction), then decode the series into the
scan and write its rows, the identifier map and the job's success in one transaction. A failure (an unreachable
PACS, a missing slice, a series that is not a volume) fails the job with its message and stores nothing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from backend.core.blobstore import get_blob_store
from backend.core.config import get_settings
from backend.core.db import declare_write_intent, session_scope
from backend.jobs import service as jobs
from backend.pacs.service import retrieval
from worker.pipelines import common, pacs_stow


def run(job_id: int) -> None:
    """Run one `pacs` job (a retrieval or a STOW, by its params' op)."""
    common.run_claimed(job_id, _dispatch)


def _dispatch(claimed: common.Claimed) -> None:
    with session_scope() as db:
        op = jobs.get_job(db, claimed.job_id).params.get("op")
    if op == "stow":
        pacs_stow.stow(claimed)
    elif op == "retrieve":
        _retrieve(claimed)
    else:
        raise ValueError(f"unknown pacs job op {op!r}")


def _retrieve(claimed: common.Claimed) -> None:
    settings = get_settings()
    blobs = get_blob_store()
    with session_scope() as db:
        declare_write_intent(db)
        job = common.owned_job(db, claimed)
        work = retrieval.begin(db, settings, job)
    if work is None:
        return
    reporter = common.Reporter(claimed)
    reporter.update(2, "retrieving the series over WADO-RS", force=True)

    def progress(done: int, total: int) -> None:
        reporter.update(2 + 68 * done / max(total, 1), f"retrieved {done} of {total} instances")

    def check() -> None:
        if reporter.should_stop():
            raise common.JobAbandoned(f"job {claimed.job_id} was cancelled or taken over")

    with tempfile.TemporaryDirectory(prefix="maskloop-pacs-") as folder:
        files = retrieval.fetch(work, Path(folder) / "series", progress, check)
        check()
        prepared = retrieval.prepare(work, files)
        reporter.update(70, f"decoding {len(files)} slices into the scan", force=True)
        with session_scope() as db:
            declare_write_intent(db)
            job = common.owned_job(db, claimed)
            retrieval.complete(db, blobs, job, work, files, prepared)
