"""The embedded default (SQLite, WAL): a worker's closing write session must not fail with 'database is locked'.

A deferred SQLite transaction that reads first and then writes fails at once when another connection committed in
between (WAL cannot upgrade its snapshot; the busy timeout does not apply). Every pipeline's closing session starts
with `closing_job`, whose read takes the write lock, making the other writer wait its turn instead.
"""

from __future__ import annotations

import threading
import time
import uuid

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from backend.models import Job, Project
from worker.pipelines import common


def _running_job(engine: Engine) -> common.Claimed:
    with Session(engine) as setup:
        project = Project(slug=f"wl-{uuid.uuid4().hex[:8]}", name="write lock")
        setup.add(project)
        setup.flush()
        job = Job(project_id=project.id, kind="attention", queue="cpu", status="running", worker="w-1")
        setup.add(job)
        setup.commit()
        return common.Claimed(job_id=job.id, worker="w-1")


def test_the_closing_session_of_a_job_survives_a_commit_by_another_connection(sqlite_engine: Engine) -> None:
    claimed = _running_job(sqlite_engine)
    other_done = threading.Event()

    def another_writer() -> None:  # e.g. the API saving a version while the worker stores its results
        with sqlite_engine.connect() as connection:
            connection.execute(text("UPDATE projects SET description = 'touched'"))
            connection.commit()
        other_done.set()

    with Session(sqlite_engine) as db:
        job = common.closing_job(db, claimed)  # the closing session starts with a read
        writer = threading.Thread(target=another_writer)
        writer.start()
        time.sleep(0.5)
        # Holding the write lock, the worker goes first; the other writer waits under the busy timeout.
        assert not other_done.is_set()
        job.message = "stored"
        db.commit()
    writer.join(timeout=30)
    assert other_done.is_set()
    with Session(sqlite_engine) as check:
        assert check.get(Job, claimed.job_id).message == "stored"  # type: ignore[union-attr]
