"""Review workflow: one task per scan moving through states, edit leases, assignment, reviews and comments.

Kept free of the labels, quality and jobs services (those call in here): it reads and writes the ORM tables
directly, so a label save can ask `check_can_save` and report `on_version_created` without an import cycle.
Cross-domain reactions (submit runs QA, approve may retrain) live in `backend.flows`, not here.

Modules, one concern each: `settings` (the workflow settings and their one validator), `tasks` (task rows,
leases on them, recorded transitions), `permissions` (who may do what), `transitions`, `reviews`, `comments`,
`leases`, `task_queue` (next task), `assignment`, `saves` (what a label save asks), `activity` (editing time) and
`task_list` (the worklist and its cursor).
"""

from backend.workflow.service.activity import MAX_ACTIVITY_SECONDS, activity_of, record_activity
from backend.workflow.service.assignment import assign
from backend.workflow.service.comments import (
    CommentSpec,
    add_comment,
    get_comment,
    list_comments,
    set_comment_resolved,
    structure_names,
)
from backend.workflow.service.errors import InvalidTransition, LeaseHeld, NotHead, ScanApproved
from backend.workflow.service.leases import acquire_lease, release_lease
from backend.workflow.service.permissions import (
    ACTIONS,
    ANNOTATION_STATES,
    EXTRA_ACTIONS,
    REVIEW_STATES,
    Caller,
    allowed_actions,
    prior_approvers,
)
from backend.workflow.service.reviews import list_reviews, submit_review
from backend.workflow.service.saves import check_can_save, on_version_created, update_priority
from backend.workflow.service.settings import (
    DEFAULT_LEASE_MINUTES,
    DEFAULT_REVIEW_LEVELS,
    WorkflowConfig,
    config_of,
    merge_settings,
    validate_settings,
)
from backend.workflow.service.task_list import (
    WORKLIST_SORTS,
    AnySelect,
    TaskContext,
    TaskRow,
    WorklistFilter,
    context_for,
    encode_cursor,
    parse_filter,
    task_row,
    worklist,
)
from backend.workflow.service.task_queue import NEXT_TASK_KINDS, next_task
from backend.workflow.service.tasks import ensure_task, lease_live, usernames
from backend.workflow.service.transitions import adjudicate, list_transitions, transition

__all__ = [
    "ACTIONS",
    "ANNOTATION_STATES",
    "DEFAULT_LEASE_MINUTES",
    "DEFAULT_REVIEW_LEVELS",
    "EXTRA_ACTIONS",
    "MAX_ACTIVITY_SECONDS",
    "NEXT_TASK_KINDS",
    "REVIEW_STATES",
    "WORKLIST_SORTS",
    "AnySelect",
    "Caller",
    "CommentSpec",
    "InvalidTransition",
    "LeaseHeld",
    "NotHead",
    "ScanApproved",
    "TaskContext",
    "TaskRow",
    "WorkflowConfig",
    "WorklistFilter",
    "acquire_lease",
    "activity_of",
    "add_comment",
    "adjudicate",
    "allowed_actions",
    "assign",
    "check_can_save",
    "config_of",
    "context_for",
    "encode_cursor",
    "ensure_task",
    "get_comment",
    "lease_live",
    "list_comments",
    "list_reviews",
    "list_transitions",
    "merge_settings",
    "next_task",
    "on_version_created",
    "parse_filter",
    "prior_approvers",
    "record_activity",
    "release_lease",
    "set_comment_resolved",
    "structure_names",
    "submit_review",
    "task_row",
    "transition",
    "update_priority",
    "usernames",
    "validate_settings",
    "worklist",
]
