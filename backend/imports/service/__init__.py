"""Dataset imports as jobs: `launching` (a run per folder, a job per case, resume), `cases` (the three steps of one
case's import, around a worker's claim), `reports` (progress and the report of imported, skipped and failed cases)
and `paths` (the API imports only under the configured import root). The names below are the public surface.
"""

from backend.imports.service.cases import (
    CaseWork,
    begin_case,
    complete_case,
    describe_failure,
    fail_case,
    prepare_case,
)
from backend.imports.service.launching import Launch, launch
from backend.imports.service.paths import resolve_local, resolve_under_root
from backend.imports.service.reports import (
    CaseLine,
    LaunchCounts,
    RunProgress,
    case_lines,
    case_of_job,
    finished_since,
    get_run,
    launch_counts,
    list_runs,
    run_progress,
    runnable_job_ids,
)

__all__ = [
    "CaseLine",
    "CaseWork",
    "Launch",
    "LaunchCounts",
    "RunProgress",
    "begin_case",
    "case_lines",
    "case_of_job",
    "complete_case",
    "describe_failure",
    "fail_case",
    "finished_since",
    "get_run",
    "launch",
    "launch_counts",
    "list_runs",
    "prepare_case",
    "resolve_local",
    "resolve_under_root",
    "run_progress",
    "runnable_job_ids",
]
