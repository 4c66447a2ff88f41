"""What a label save asks of the workflow: may it be saved, and how the task moves once it is.

The labels and scans services call these; this package never imports them (they sit above it).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.db import get_or_404
from backend.models import LabelVersion, ReaderSet, ReaderSetMember, Scan
from backend.projects import service as projects
from backend.workflow.service.activity import bump_activity
from backend.workflow.service.permissions import FROM_STATES
from backend.workflow.service.settings import config_of
from backend.workflow.service.tasks import (
    apply,
    approved_error,
    ensure_task,
    grant_lease,
    lease_held_error,
    lease_live,
    locked_task,
    utcnow,
)


def _in_open_reader_set(db: Session, scan_id: int, user_id: int) -> bool:
    found = db.scalar(
        select(ReaderSetMember.id)
        .join(ReaderSet, ReaderSet.id == ReaderSetMember.reader_set_id)
        .where(ReaderSet.scan_id == scan_id, ReaderSet.status == "open", ReaderSetMember.user_id == user_id)
        .limit(1)
    )
    return found is not None


def check_can_save(db: Session, scan: Scan, user_id: int | None, *, kind: str, branch: bool) -> None:
    """Refuse a label save the workflow forbids: approved scans (409 scan_approved), others' leases (409 lease_held).

    A member of an open reader set of the scan may always save a branch (readers work blinded, off the head).
    Model versions and saves without a user (imports) ignore leases but not approval.
    """
    task = ensure_task(db, scan)
    if branch and user_id is not None and _in_open_reader_set(db, scan.id, user_id):
        return
    if task.state == "approved":
        raise approved_error(task)
    if kind == "model" or user_id is None:
        return
    if lease_live(task) and task.lease_user_id != user_id:
        raise lease_held_error(db, task)


def on_version_created(db: Session, scan: Scan, version: LabelVersion) -> None:
    """Move the task after a label save: a model version pre-annotates a new scan, a first human save starts it."""
    task = locked_task(db, scan)
    now = utcnow()
    if version.kind == "model" and not version.is_branch and task.state == "new":
        apply(db, task, "pre_annotate", "pre_annotated", actor_user_id=None, version_id=version.id, now=now)
    author = version.author_user_id
    if version.kind == "human" and author is not None:
        if not version.is_branch and task.state in FROM_STATES["start"]:
            # An implied start records who works on the scan; leases stay explicit (start, lease, next-task).
            if task.assignee_user_id is None:
                task.assignee_user_id = author
            apply(db, task, "start", "annotating", actor_user_id=author, version_id=version.id, now=now)
        if task.lease_user_id == author and lease_live(task, now):
            grant_lease(task, author, config_of(projects.get_project(db, task.project_id)), now)
        bump_activity(db, scan, author, saves=1)
    task.updated_at = now
    db.flush()


def update_priority(db: Session, scan_id: int, priority: float) -> None:
    """Store the scan's review priority (its highest structure attention priority) on its task."""
    task = ensure_task(db, get_or_404(db, Scan, scan_id, "scan"))
    task.priority = float(priority)
    db.flush()
