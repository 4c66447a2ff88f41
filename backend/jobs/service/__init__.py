"""Jobs: one module per concern. `lifecycle` (create, claim, heartbeat, finish, fail, cancel, list, queue
position), `launching` (what a launch request targets, and the jobs of pre-annotation, attention, training and
fusion) and `retraining` (the retrain policy after an approval). Every job is sent to the broker once its
transaction commits, by `backend.jobs.outbox`. The names below are the domain's public surface.
"""

from backend.jobs.outbox import TASK_OF_KIND, UNSENT_PREFIX
from backend.jobs.service.launching import (
    MAX_SCANS_PER_REQUEST,
    approved_version_ids,
    attention_thresholds,
    fusion_job_of,
    launch_attention,
    launch_fusion,
    launch_preannotation,
    launch_training,
    preannotation_targets,
    resolve_model_version,
    select_scans,
)
from backend.jobs.service.lifecycle import (
    ACTIVE,
    FINAL,
    QUEUE_OF_KIND,
    claim,
    create_job,
    fail,
    force_fail,
    get_job,
    heartbeat,
    list_jobs,
    mark_cancelled,
    queue_positions,
    request_cancel,
    requeue_candidates,
    succeed,
    unsent_jobs,
)
from backend.jobs.service.retraining import AUTO_HELDOUT_FRACTION, AUTO_TRAINING_EPOCHS, on_scan_approved

__all__ = [
    "ACTIVE",
    "AUTO_HELDOUT_FRACTION",
    "AUTO_TRAINING_EPOCHS",
    "FINAL",
    "MAX_SCANS_PER_REQUEST",
    "QUEUE_OF_KIND",
    "TASK_OF_KIND",
    "UNSENT_PREFIX",
    "approved_version_ids",
    "attention_thresholds",
    "claim",
    "create_job",
    "fail",
    "force_fail",
    "fusion_job_of",
    "get_job",
    "heartbeat",
    "launch_attention",
    "launch_fusion",
    "launch_preannotation",
    "launch_training",
    "list_jobs",
    "mark_cancelled",
    "on_scan_approved",
    "preannotation_targets",
    "queue_positions",
    "request_cancel",
    "requeue_candidates",
    "resolve_model_version",
    "select_scans",
    "succeed",
    "unsent_jobs",
]
