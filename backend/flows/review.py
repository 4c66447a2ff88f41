"""The review workflow's use cases: next task, transitions (submit runs QA, approve the retrain policy), reviews,
leases, assignments, comments and editing time.

Each flow is one transaction ending in one commit. The reactions that cross domains live here because
workflow.service sits below quality and jobs: a submit runs the QA rules on the submitted version, an approval
records the models' AI-vs-final Dice (`flows.registry.score_approval`) and asks the retrain policy
(`flows.jobs.after_approval`) whether an 'auto' model trains now; its jobs are sent once this transaction commits
(jobs.outbox).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.errors import DomainError
from backend.flows import jobs as job_flows
from backend.flows import registry as registry_flows
from backend.labels import service as labels
from backend.models import Project, Review, ReviewComment, Scan, ScanTask, User
from backend.quality import service as quality
from backend.workflow import service as workflow


def next_task(db: Session, project: Project, kind: str, *, actor: User, role: str) -> ScanTask | None:
    """Claim (with the edit lease) the highest-priority task waiting for the actor; None when there is none."""
    task = workflow.next_task(db, project, actor, role, kind)
    if task is None:
        # Nothing was claimed: the request's transaction is released without a commit, as a read.
        return None
    db.commit()
    return task


def assign(
    db: Session,
    project: Project,
    *,
    scan_ids: Sequence[int],
    user_id: int | None,
    role: str = "annotator",
    structure_ids: Sequence[int] | None = None,
    actor: User,
) -> int:
    """Assign scans (or some of their structures) to an annotator or a reviewer; a None user unassigns."""
    updated = workflow.assign(
        db, project, actor, scan_ids=scan_ids, user_id=user_id, role=role, structure_ids=structure_ids
    )
    db.commit()
    return updated


def transition(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    action: str,
    *,
    version_id: int | None = None,
    message: str = "",
    actor: User,
    role: str,
) -> ScanTask:
    """Apply a workflow action; a submit then runs QA on the submitted version, an approval the retrain policy."""
    task = workflow.transition(db, scan, actor, role, action, version_id=version_id, message=message)
    if action == "submit" and task.submitted_version_id is not None:
        _check_submitted(db, blobs, scan, task.submitted_version_id, actor)
    if action == "approve":
        # The retrain policy acts only once the last review level passed; its jobs go out after this commit.
        _after_approval(db, blobs, scan)
    db.commit()
    return task


def _after_approval(db: Session, blobs: BlobStore, scan: Scan) -> None:
    """Once the last review level passed: score the models' drafts against the approved version (AI-vs-final Dice
    per structure, recorded against each model version that pre-annotated the scan), then the retrain policy."""
    task = workflow.ensure_task(db, scan)
    if task.state == "approved":
        registry_flows.score_approval_safely(db, blobs, scan, task.approved_version_id)
    job_flows.after_approval(db, scan)


def _check_submitted(db: Session, blobs: BlobStore, scan: Scan, version_id: int, actor: User) -> None:
    """Run the QA rules on a submitted version; a QA refusal leaves the submit standing without findings."""
    version = labels.get_version(db, version_id)
    try:
        # A savepoint, not a second commit: QA's writes go back on a refusal while the submit stays in the
        # transaction. QA can be rerun with POST /api/scans/{id}/qa.
        with db.begin_nested():
            quality.run_qa(db, blobs, scan, version, actor=actor)
    except DomainError:
        pass


def submit_review(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    *,
    version_id: int,
    decision: str,
    message: str = "",
    comments: Sequence[workflow.CommentSpec] = (),
    actor: User,
    role: str,
) -> Review:
    """Approve or request changes on the head version at the current review level, with located comments."""
    review = workflow.submit_review(
        db, scan, actor, role, version_id=version_id, decision=decision, message=message, comments=comments
    )
    if decision == "approve":
        # The retrain policy acts only once the last review level passed; its jobs go out after this commit.
        _after_approval(db, blobs, scan)
    db.commit()
    return review


def acquire_lease(db: Session, scan: Scan, *, actor: User, role: str) -> ScanTask:
    """Take or renew (heartbeat) the scan's edit lease; 409 lease_held while someone else holds a live one."""
    task = workflow.acquire_lease(db, scan, actor, role)
    db.commit()
    return task


def release_lease(db: Session, scan: Scan, *, actor: User, role: str) -> ScanTask:
    """Release the edit lease (its holder), or force-release it (a lead)."""
    task = workflow.release_lease(db, scan, actor, role)
    db.commit()
    return task


def add_comment(db: Session, scan: Scan, spec: workflow.CommentSpec, *, actor: User) -> ReviewComment:
    """Pin a comment on the scan (optionally a version, a structure, a slice and/or a voxel)."""
    comment = workflow.add_comment(db, scan, actor, spec)
    db.commit()
    return comment


def set_comment_resolved(db: Session, comment: ReviewComment, resolved: bool, *, actor: User) -> ReviewComment:
    """Resolve (or re-open) a comment."""
    comment = workflow.set_comment_resolved(db, comment, actor, resolved)
    db.commit()
    return comment


def record_activity(db: Session, scan: Scan, seconds: float, *, actor: User) -> ScanTask:
    """Add active editing seconds to the scan's task and to the actor's tally of the day."""
    task = workflow.record_activity(db, scan, actor, seconds)
    db.commit()
    return task
