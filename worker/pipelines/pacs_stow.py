"""A `pacs` job of op 'stow': send a label version to the project's PACS as DICOM SEG (backend.pacs.service.stow).

Begin (what to send, read in one short transaction), build and store the SEG (and for a NIfTI scan its CT series
first) with no transaction open, then record the audit event and the job's success. A PACS that refuses or cannot
be reached fails the job with its message; nothing is written in maskloop but the job's outcome.
"""

from __future__ import annotations

from backend.core.blobstore import get_blob_store
from backend.core.config import get_settings
from backend.core.db import declare_write_intent, session_scope
from backend.pacs.service import stow as stow_service
from worker.pipelines import common


def stow(claimed: common.Claimed) -> None:
    """Run a claimed STOW job."""
    settings = get_settings()
    with session_scope() as db:
        work = stow_service.begin(db, settings, common.owned_job(db, claimed))
    reporter = common.Reporter(claimed)
    result = stow_service.send(get_blob_store(), work, lambda percent, note: reporter.update(percent, note, force=True))
    if reporter.should_stop():
        raise common.JobAbandoned(f"job {claimed.job_id} was cancelled")
    with session_scope() as db:
        declare_write_intent(db)
        stow_service.complete(db, common.closing_job(db, claimed), work, result)
