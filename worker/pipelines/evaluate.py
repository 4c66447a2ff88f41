"""Evaluation: score an evaluation run's predicted versions against approved ground truth (cpu queue).

Idempotent: the results are written in one transaction that first deletes the run's earlier results, so a rerun
(a redelivered task, a re-claimed job after a lost worker) replaces them instead of adding a second set.
"""

from __future__ import annotations

from backend.core.blobstore import get_blob_store
from backend.core.db import session_scope
from backend.evaluation import service as evaluation
from backend.jobs import service as jobs
from worker.pipelines import common


def run(job_id: int) -> None:
    """Run (or rerun) the evaluation job."""
    common.run_claimed(job_id, _run)


def _run(claimed: common.Claimed) -> None:
    blobs = get_blob_store()
    with session_scope() as db:
        job = common.owned_job(db, claimed)
        run_row = evaluation.run_for_job(db, job.id)
        plans = evaluation.plan_cases(db, run_row)
        evaluation.mark_running(db, run_row)
        run_id, detection_config = run_row.id, dict(run_row.config["detection"])
    reporter = common.Reporter(claimed)
    reporter.update(2, f"scoring {len(plans)} cases", force=True)
    outcomes = []
    for index, plan in enumerate(plans):
        if reporter.should_stop():
            raise common.JobAbandoned(f"evaluation {run_id} stopped at case {index}")
        outcomes.append(evaluation.compute_case(blobs, plan, detection_config))
        reporter.update(2 + 93 * (index + 1) / max(1, len(plans)), f"scored {plan.case_id} ({index + 1}/{len(plans)})")
    reporter.update(96, "writing the results", force=True)
    with session_scope() as db:
        job = common.closing_job(db, claimed)
        run_row = evaluation.get_run(db, run_id)
        evaluation.store_results(db, run_row, outcomes)
        summary = run_row.summary
        jobs.succeed(
            db,
            job,
            {"evaluation_run_id": run_id, "cases": summary["cases"], "pairs": summary["pairs"]},
            message=f"evaluated {summary['cases']} cases",
        )
