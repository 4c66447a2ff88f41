"""Jobs reach the broker only after their transaction commits (backend.jobs.outbox), on the real Redis broker.

Not before the commit, not after a rollback, not from a rolled-back savepoint; `sent_at` is stamped; with the
broker down the commit still stands and the job says "not yet sent" (sent_at cleared), and the reaper sends it
once the broker is back. No worker runs here: the messages stay in their Redis queue for the test to read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import suppress

import pytest
import redis
from sqlalchemy.orm import Session

from backend.core import queue
from backend.core.config import get_settings
from backend.jobs import outbox, recovery
from backend.jobs import service as jobs
from backend.jobs.outbox import UNSENT_PREFIX
from backend.jobs.reaper import Reaper
from backend.models import Job, ModelVersion
from tests.conftest import World
from tests.factories import small_phantom, upload_scan
from tests.integration.worker_stack import Stack, build_stack

# Nothing listens on port 1: a connection there is refused at once, as with a broker that is down.
DEAD_BROKER = "redis://127.0.0.1:1/0"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A committed PostgreSQL database and a Redis broker database of its own (no worker consumes it)."""
    with build_stack(tmp_path_factory.mktemp("outbox")) as built:
        yield built


@pytest.fixture
def broker(stack: Stack) -> Iterator[redis.Redis]:
    """The stack's Redis database, its job queues emptied before and after each test."""
    client = redis.Redis.from_url(stack.settings.resolved_broker_url)
    client.delete(*queue.QUEUES)
    yield client
    client.delete(*queue.QUEUES)


@pytest.fixture
def broker_down(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process sends to a broker that cannot be reached; the stack's broker is back after the test."""
    monkeypatch.setenv("MASKLOOP_BROKER_URL", DEAD_BROKER)
    get_settings.cache_clear()
    queue.client.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()
    queue.client.cache_clear()


def _task_ids(broker: redis.Redis, queue_name: str = "cpu") -> list[str]:
    """The task ids waiting in a queue, oldest first (kombu pushes on the left)."""
    raw = broker.lrange(queue_name, 0, -1)
    return [json.loads(message)["headers"]["id"] for message in reversed(raw)]


def _export_job(db: Session, project_id: int) -> Job:
    return jobs.create_job(db, project_id=project_id, kind="export", created_by=None)


def test_a_job_is_sent_only_once_its_transaction_commits(stack: Stack, broker: redis.Redis) -> None:
    with stack.factory() as db:
        job = _export_job(db, stack.project.id)
        db.flush()
        assert _task_ids(broker) == [] and job.sent_at is None
        db.commit()
        assert _task_ids(broker) == [f"job-{job.id}-0"]
        assert job.sent_at is not None and job.message == "waiting in the queue"
        job_id = job.id
    with stack.factory() as db:
        stored = db.get(Job, job_id)
        assert stored is not None and stored.status == "queued" and stored.sent_at is not None
    # A later commit of the same session sends nothing again.
    with stack.factory() as db:
        db.get(Job, job_id)
        db.commit()
    assert _task_ids(broker) == [f"job-{job_id}-0"]


def test_a_rolled_back_job_is_never_sent(stack: Stack, broker: redis.Redis) -> None:
    with stack.factory() as db:
        job_id = _export_job(db, stack.project.id).id
        db.rollback()
        db.commit()  # the next transaction of the same session has nothing to send
    assert _task_ids(broker) == []
    with stack.factory() as db:
        assert db.get(Job, job_id) is None


def test_a_job_of_a_rolled_back_savepoint_is_not_sent(stack: Stack, broker: redis.Redis) -> None:
    with stack.factory() as db:
        kept = _export_job(db, stack.project.id)
        with db.begin_nested():
            released = _export_job(db, stack.project.id)
        assert _task_ids(broker) == []  # a released savepoint is not a commit
        with suppress(RuntimeError), db.begin_nested():
            dropped_id = _export_job(db, stack.project.id).id
            raise RuntimeError("the savepoint rolls back")
        db.commit()
        assert _task_ids(broker) == [f"job-{kept.id}-0", f"job-{released.id}-0"]
        assert db.get(Job, dropped_id) is None


def test_a_withheld_job_is_committed_but_not_sent(stack: Stack, broker: redis.Redis) -> None:
    """A caller that runs a job in its own process (a test, a tool) keeps it off the broker."""
    with stack.factory() as db:
        held = _export_job(db, stack.project.id)
        sent = _export_job(db, stack.project.id)
        outbox.withhold(db, [held])
        db.commit()
        assert _task_ids(broker) == [f"job-{sent.id}-0"]
        assert held.sent_at is None and db.get(Job, held.id) is not None


def test_with_the_broker_down_the_commit_stands_and_the_reaper_sends_it_later(
    stack: Stack, broker: redis.Redis, broker_down: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with stack.factory() as db:
        job = _export_job(db, stack.project.id)
        db.commit()  # the publish fails after the commit: nothing is raised
        assert job.message.startswith(f"{UNSENT_PREFIX} to the cpu queue") and job.sent_at is None
        job_id = job.id
    with stack.factory() as db:
        stored = db.get(Job, job_id)
        assert stored is not None and stored.status == "queued"
        assert stored.message.startswith(UNSENT_PREFIX) and stored.sent_at is None
        assert job_id in recovery.lost_queued_ids(db, 3600)
    assert _task_ids(broker) == []
    # The broker is back: the reaper's pass sends it, with a re-send task id, after its own commit.
    monkeypatch.setenv("MASKLOOP_BROKER_URL", stack.env["MASKLOOP_BROKER_URL"])
    get_settings.cache_clear()
    queue.client.cache_clear()
    report = Reaper(stack.settings).tick()
    assert job_id in report.resent
    assert any(task.startswith(f"job-{job_id}-r0-") for task in _task_ids(broker))
    with stack.factory() as db:
        resent = db.get(Job, job_id)
        assert resent is not None and resent.sent_at is not None
        assert resent.message == "waiting in the queue (message re-sent)"


def test_an_api_launch_with_the_broker_down_answers_with_the_unsent_job(stack: Stack, broker_down: None) -> None:
    lead = stack.headers["lead"]
    scan = upload_scan(stack.client, lead, stack.project.id, small_phantom(seed=5), "outbox-unsent")
    created = stack.client.post(
        f"/api/projects/{stack.project.id}/models",
        headers=lead,
        json={"name": "outbox-classical", "architecture": "classical", "structures": ["liver"]},
    )
    assert created.status_code == 201, created.text
    with stack.factory() as db:
        version = ModelVersion(model_id=created.json()["id"], number=1, is_promoted=True)
        db.add(version)
        db.commit()
        version_id = version.id
    response = stack.client.post(
        f"/api/projects/{stack.project.id}/preannotate",
        headers=lead,
        json={"model_version_id": version_id, "scan_ids": [scan["id"]]},
    )
    assert response.status_code == 201, response.text
    [job] = response.json()
    assert job["status"] == "queued" and job["message"].startswith(f"{UNSENT_PREFIX} to the gpu queue")
    assert stack.job(job["id"])["message"] == job["message"]


def test_the_tests_savepoint_session_sends_on_its_commit(
    stack: Stack, broker: redis.Redis, db: Session, world: World
) -> None:
    """The per-test session (joined to an outer transaction, commits become savepoints) uses the same outbox."""
    job = _export_job(db, world.project.id)
    assert _task_ids(broker) == []
    db.commit()
    assert _task_ids(broker) == [f"job-{job.id}-0"]
    assert job.sent_at is not None


def test_the_tests_savepoint_session_records_an_unsent_job_on_its_connection(
    broker_down: None, db: Session, world: World
) -> None:
    job = _export_job(db, world.project.id)
    db.commit()
    assert job.message.startswith(UNSENT_PREFIX) and job.sent_at is None
    db.expire(job)
    assert job.message.startswith(UNSENT_PREFIX) and job.sent_at is None  # read back from the database
