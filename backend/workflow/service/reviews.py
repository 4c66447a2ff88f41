"""Reviews: approve (to the next level, or approved at the last) or request changes on the head version."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.errors import InvalidInput
from backend.models import Review, Scan, User
from backend.projects import service as projects
from backend.workflow.service.comments import CommentSpec, comment_row
from backend.workflow.service.errors import LeaseHeld
from backend.workflow.service.permissions import Caller, prior_approvers, refusal
from backend.workflow.service.settings import config_of
from backend.workflow.service.tasks import apply, clear_lease, head_version, lease_held_error, locked_task, utcnow


def submit_review(
    db: Session,
    scan: Scan,
    user: User,
    role: str,
    *,
    version_id: int,
    decision: str,
    message: str = "",
    comments: Sequence[CommentSpec] = (),
) -> Review:
    """Approve (next level, or approved at the last) or request changes on the head version at the current level."""
    if decision not in ("approve", "request_changes"):
        raise InvalidInput("decision must be 'approve' or 'request_changes'")
    if decision == "request_changes" and not message.strip():
        raise InvalidInput("requesting changes needs a message saying what to change")
    task = locked_task(db, scan)
    now = utcnow()
    caller = Caller(user.id, role)
    refused = refusal(task, caller, decision, now=now, prior_approvers=prior_approvers(db, [task]).get(scan.id, ()))
    if refused is not None:
        if isinstance(refused, LeaseHeld):
            raise lease_held_error(db, task)
        raise refused
    version = head_version(db, scan, version_id, "approve" if decision == "approve" else "review")
    config = config_of(projects.get_project(db, task.project_id))
    level = max(1, task.review_level)
    rows = [
        comment_row(db, scan, user.id, dataclasses.replace(spec, version_id=spec.version_id or version))
        for spec in comments
    ]
    review = Review(
        project_id=task.project_id,
        scan_id=scan.id,
        version_id=version,
        reviewer_user_id=user.id,
        review_level=level,
        decision=decision,
        message=message[:4000],
        created_at=now,
    )
    db.add(review)
    db.flush()
    for row in rows:
        row.review_id = review.id
        db.add(row)
    level_name = config.review_levels[min(level, len(config.review_levels)) - 1]
    details = {"review_id": review.id, "level_name": level_name, "message": message[:2000]}
    clear_lease(task)
    if decision == "request_changes":
        task.review_level = 0
        apply(
            db,
            task,
            "request_changes",
            "changes_requested",
            actor_user_id=user.id,
            version_id=version,
            now=now,
            details=details,
        )
    elif level < len(config.review_levels):
        task.review_level = level + 1
        task.reviewer_user_id = None
        apply(db, task, "approve", "in_review", actor_user_id=user.id, version_id=version, now=now, details=details)
    else:
        task.approved_version_id = version
        task.approved_at = now
        task.review_level = 0
        apply(db, task, "approve", "approved", actor_user_id=user.id, version_id=version, now=now, details=details)
    return review


def list_reviews(db: Session, scan: Scan) -> list[Review]:
    """The scan's reviews, oldest first."""
    return list(db.scalars(select(Review).where(Review.scan_id == scan.id).order_by(Review.created_at, Review.id)))
