"""The API side of the task queue: send tasks by name (the API never imports worker code, torch or monai)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from backend.core.config import Settings, get_settings

QUEUES = ("gpu", "cpu")
# Click requests of the interactive AI: no job row, a short expiry, answered by a warm worker within seconds.
INTERACTIVE_QUEUE = "interactive"
# Every queue a worker may consume (`-Q`): the job queues and the interactive one.
WORKER_QUEUES = (*QUEUES, INTERACTIVE_QUEUE)

# Task names are the contract between the API and the workers (worker/tasks.py registers them).
TASK_PREANNOTATE = "maskloop.preannotate"
TASK_ATTENTION = "maskloop.attention"
TASK_TRAIN = "maskloop.train"
TASK_EXPORT = "maskloop.export"
TASK_EVALUATE = "maskloop.evaluate"
TASK_FUSE = "maskloop.fuse"
# One case of a dataset import (backend/imports): the cpu queue, one job per case.
TASK_IMPORT = "maskloop.import_case"
TASK_INTERACTIVE = "maskloop.interactive"
# An uploaded weights file checked against its model's architecture (the cpu queue; the upload waits on it).
TASK_CHECK_WEIGHTS = "maskloop.check_weights"
# A PACS job (backend/pacs): retrieve a series over WADO-RS into a scan, or STOW-RS a version as DICOM SEG.
TASK_PACS = "maskloop.pacs"


def configure(app: Celery, settings: Settings) -> None:
    """Settings shared by the API's client and the workers: reliable delivery, one task at a time per worker."""
    app.conf.update(
        broker_url=settings.resolved_broker_url,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue="cpu",
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(60, settings.task_time_limit_s - 60),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    if settings.resolved_broker_url.startswith(("redis://", "rediss://")):
        # A task whose worker died unacknowledged is delivered again after this many seconds.
        app.conf.broker_transport_options = {"visibility_timeout": settings.broker_visibility_timeout_s}
    elif settings.broker_poll_s and settings.resolved_broker_url.startswith("sqla+"):
        # An idle worker polls the SQLite broker every `polling_interval` (kombu's virtual transports: 1 s); the
        # interactive worker `maskloop serve` starts polls often. Set on the transport class: kombu's SQLAlchemy
        # transport hands every transport option to create_engine, which refuses this one.
        from kombu.transport import sqlalchemy as sqla_transport

        sqla_transport.Transport.polling_interval = settings.broker_poll_s


@lru_cache
def client() -> Celery:
    """A Celery app used only to send tasks."""
    app = Celery("maskloop-api")
    configure(app, get_settings())
    return app


def send(task_name: str, job_id: int, queue: str, attempt: int | str = 0) -> str:
    """Enqueue a task for a job; the task id (`job-<id>-<attempt>`) tells a first send from a re-send."""
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}")
    task_id = f"job-{job_id}-{attempt}"
    client().send_task(task_name, args=[job_id], queue=queue, task_id=task_id)
    return task_id


def send_interactive(message: dict[str, Any], expires_s: float) -> None:
    """Publish a click request on the interactive queue; a worker drops it unrun once `expires_s` have passed."""
    client().send_task(TASK_INTERACTIVE, args=[message], queue=INTERACTIVE_QUEUE, expires=expires_s)
