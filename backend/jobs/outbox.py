"""Jobs reach the broker only once the transaction that created them has committed: the one way a job is sent.

`send_after_commit` registers jobs in the session (`session.info`); listeners on the `Session` class (so every
session: requests, CLI, workers, the reaper, the tests' savepoint-joined ones) act when the outermost transaction
ends. Before the commit they stamp `sent_at` on the registered jobs still stored and queued (a job of a
rolled-back savepoint is gone by then); after it they publish each one, so a task always finds its committed row.
A broker that cannot be reached leaves the job queued with an "unsent" message (written on a separate connection,
since the session can emit no SQL after its commit); the workers' reaper or `maskloop jobs --requeue` sends it
again. A rollback drops the registrations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, event, inspect, update
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.attributes import set_committed_value

from backend.core import queue
from backend.models import Job

log = logging.getLogger(__name__)

# A queued job whose message starts with this never reached the broker (the reaper sends it again).
UNSENT_PREFIX = "not yet sent"
WAITING = "waiting in the queue"

TASK_OF_KIND = {
    "preannotate": queue.TASK_PREANNOTATE,
    "attention": queue.TASK_ATTENTION,
    "train": queue.TASK_TRAIN,
    "export": queue.TASK_EXPORT,
    "evaluate": queue.TASK_EVALUATE,
    "fuse": queue.TASK_FUSE,
    "import": queue.TASK_IMPORT,
    "pacs": queue.TASK_PACS,
    "check_weights": queue.TASK_CHECK_WEIGHTS,
}

# session.info keys: the jobs registered in the current transaction, and the messages its commit publishes.
_REGISTERED = "maskloop.outbox.registered"
_OUTGOING = "maskloop.outbox.outgoing"


@dataclass(frozen=True)
class _Message:
    """What to publish for one job, read before the commit (the session may not load anything after it)."""

    job: Job
    job_id: int
    kind: str
    queue: str
    attempts: int
    resend: bool


def _now() -> datetime:
    return datetime.now(UTC)


def send_after_commit(db: Session, jobs: Iterable[Job], *, resend: bool = False) -> None:
    """Publish these queued jobs once the session's transaction commits (never if it rolls back).

    A re-send (resend=True) gets a new task id, `job-<id>-r<attempts>-<ms>`; a first send is `job-<id>-0`.
    """
    registered: dict[int, tuple[Job, bool]] = db.info.setdefault(_REGISTERED, {})
    for job in jobs:
        earlier = registered.get(id(job))
        registered[id(job)] = (job, resend or (earlier is not None and earlier[1]))


def withhold(db: Session, jobs: Iterable[Job]) -> None:
    """Keep these jobs off the broker at the next commit: the caller runs them in this process (tests, tools)."""
    registered: dict[int, tuple[Job, bool]] = db.info.get(_REGISTERED, {})
    for job in jobs:
        registered.pop(id(job), None)


def _outermost(session: Session) -> bool:
    """Whether the commit under way is the session's own transaction (not a savepoint being released)."""
    return not session.in_nested_transaction()


@event.listens_for(Session, "before_commit")
def _stamp(session: Session) -> None:
    """Stamp the registered jobs that are still stored and queued, and note what to publish after the commit."""
    registered: dict[int, tuple[Job, bool]] | None = session.info.get(_REGISTERED)
    if not registered or not _outermost(session):
        return
    session.flush()
    now = _now()
    outgoing = []
    for job, resend in registered.values():
        # A job added in a rolled-back savepoint is transient again; a cancelled or claimed one needs no message.
        if not inspect(job).persistent or job.status != "queued":
            continue
        job.sent_at = now  # the reaper re-sends a queued job whose message was lost long after this
        if job.message.startswith(UNSENT_PREFIX):
            job.message = WAITING
        outgoing.append(_Message(job, job.id, job.kind, job.queue, job.attempts, resend))
    session.info[_OUTGOING] = outgoing


@event.listens_for(Session, "after_commit")
def _publish(session: Session) -> None:
    """Send each committed job to its queue; a failure is recorded on the job, never raised (the data is stored)."""
    if not _outermost(session):
        return
    outgoing: list[_Message] = session.info.pop(_OUTGOING, [])
    session.info.pop(_REGISTERED, None)
    for message in outgoing:
        try:
            _send(message)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            _record_unsent(session, message, f"{UNSENT_PREFIX} to the {message.queue} queue: {reason}")


@event.listens_for(Session, "after_transaction_end")
def _forget(session: Session, transaction: SessionTransaction) -> None:
    """Drop the registrations when the session's transaction ends: a commit has sent them, a rollback or close
    means nothing of it was stored (a savepoint's end changes nothing: the commit checks which jobs survived)."""
    if transaction.parent is None:
        session.info.pop(_REGISTERED, None)
        session.info.pop(_OUTGOING, None)


def _send(message: _Message) -> None:
    attempt: int | str = f"r{message.attempts}-{int(_now().timestamp() * 1000)}" if message.resend else 0
    queue.send(TASK_OF_KIND[message.kind], message.job_id, message.queue, attempt)


def _record_unsent(session: Session, message: _Message, text: str) -> None:
    """Note on the job that its message never left, on a connection of its own, and show it on the loaded object."""
    text = text[:500]
    log.warning("job %s was committed but not sent: %s", message.job_id, text)
    # A worker that got the message despite the error has claimed the job already: leave that job alone.
    statement = (
        update(Job)
        .where(Job.id == message.job_id, Job.status == "queued")
        .values(message=text, sent_at=None)
        .execution_options(synchronize_session=False)
    )
    try:
        bind: Any = session.get_bind(Job)
        if isinstance(bind, Connection):
            # A session joined to an outer connection (the tests' transaction): write within it.
            if bind.in_transaction():
                bind.execute(statement)
            else:
                with bind.begin():
                    bind.execute(statement)
        else:
            with bind.begin() as connection:
                connection.execute(statement)
    except Exception:  # the job stays queued with sent_at set; the reaper finds it at the head of its queue
        log.exception("recording that job %s was not sent failed", message.job_id)
    set_committed_value(message.job, "message", text)
    set_committed_value(message.job, "sent_at", None)
