"""Import one case of a dataset import run (a `cpu` job per case; see backend.imports.service.cases).

Begin (the case row becomes `running`), prepare outside any transaction (decode the CT and the masks on
`import_mask_threads` threads, store the blobs), then write the scan, its version, QA, the case row and the job's
success in one transaction. A failure is recorded on the case (file and reason) and fails the job; other cases
go on. A worker killed at any point leaves the case without rows: the reaper sends the job again and the next
worker imports it from the start (the blobs already stored are found, not written twice).
"""

from __future__ import annotations

import os
import time

from backend.core.blobstore import get_blob_store
from backend.core.config import get_settings
from backend.core.db import declare_write_intent, session_scope
from backend.imports import service as imports
from worker.pipelines import common

# Test hook: seconds a worker waits (heartbeating) after decoding a case and before writing its rows, so a test
# can kill it with the case half done. Never set in a deployment.
HOLD_BEFORE_ROWS_ENV = "MASKLOOP_TEST_IMPORT_HOLD_BEFORE_ROWS_S"


def run(job_id: int) -> None:
    """Run one case-import job."""
    common.run_claimed(job_id, _run)


def _run(claimed: common.Claimed) -> None:
    blobs = get_blob_store()
    with session_scope() as db:
        declare_write_intent(db)
        job = common.owned_job(db, claimed)
        work = imports.begin_case(db, job, claimed.worker)
    if work is None:
        return
    reporter = common.Reporter(claimed)
    try:
        reporter.update(5, f"decoding {work.case_id}", force=True)
        prepared = imports.prepare_case(blobs, work, threads=get_settings().import_mask_threads or None)
        reporter.update(90, f"decoded {work.case_id}; writing its rows", force=True)
        _hold_for_tests(claimed)
        with session_scope() as db:
            declare_write_intent(db)
            job = common.owned_job(db, claimed)
            imports.complete_case(db, blobs, job, work, prepared)
    except (common.JobAbandoned, common.TransientError):
        raise
    except Exception as exc:
        with session_scope() as db:
            imports.fail_case(db, work, exc)
        raise


def _hold_for_tests(claimed: common.Claimed) -> None:
    hold = float(os.environ.get(HOLD_BEFORE_ROWS_ENV) or 0)
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline and not claimed.lost.is_set():
        time.sleep(0.05)
