"""Evaluation runs: score a model version's (or explicit) label versions against approved ground truth.

Ground truth is `ScanTask.approved_version_id` of each scan of the chosen split ('all' = every scan). A run is
planned here (pairs of ground-truth and predicted versions, stored in `run.config`), executed as a `cpu` job
(`maskloop.evaluate`, worker/pipelines/evaluate.py) or synchronously (`execute_run`, used by the CLI), and its
results replace any earlier results of the same run, so a rerun is idempotent.

Summary conventions: per structure mean and median of DSC, NSD, HD95 and volume error over the pairs where the
metric is defined (NSD/HD95 are undefined when either mask is empty, see `metrics`); breakdowns by site, phase,
manufacturer and by lesion size bucket, where a case's bucket is its *total* ground-truth lesion volume
(`detection.size_bucket`: <1, 1–5, 5–20, >20 mL; "no lesion" when the lesion mask is empty). Structures whose
ground truth or prediction is *missing* (unknown, not empty) are skipped and listed, never scored as empty.
"""

from backend.evaluation.service.execution import (
    CaseOutcome,
    CasePlan,
    StructurePlan,
    compute_case,
    execute_run,
    mark_running,
    plan_cases,
    store_results,
)
from backend.evaluation.service.options import evaluation_options
from backend.evaluation.service.reports import (
    CASE_COLUMNS,
    case_rows,
    cases_csv,
    detection_rows,
    leaderboard,
    report,
)
from backend.evaluation.service.runs import (
    FINAL,
    MAX_PAIRS,
    EvaluationRequest,
    RunState,
    create_run,
    get_run,
    launch,
    list_runs,
    run_definition,
    run_for_job,
    run_state,
)
from backend.evaluation.service.summary import summarize

__all__ = [
    "CASE_COLUMNS",
    "FINAL",
    "MAX_PAIRS",
    "CaseOutcome",
    "CasePlan",
    "EvaluationRequest",
    "RunState",
    "StructurePlan",
    "case_rows",
    "cases_csv",
    "compute_case",
    "create_run",
    "detection_rows",
    "evaluation_options",
    "execute_run",
    "get_run",
    "launch",
    "leaderboard",
    "list_runs",
    "mark_running",
    "plan_cases",
    "report",
    "run_definition",
    "run_for_job",
    "run_state",
    "store_results",
    "summarize",
]
