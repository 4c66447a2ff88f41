"""The Celery application of maskloop workers (`celery -A worker.celery_app worker -Q gpu,cpu`)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_ready, worker_shutdown
from kombu import Queue

from backend.core.config import get_settings
from backend.core.queue import WORKER_QUEUES, configure
from backend.jobs.reaper import Reaper
from backend.storage.temp import sweep_temp
from worker import observability
from worker.pipelines.predictors import load_configured_predictors

app = Celery("maskloop", include=["worker.tasks"])
configure(app, get_settings())
app.conf.task_queues = [Queue(name) for name in WORKER_QUEUES]
# Job metrics, job ids in the logs, JSON logs, the /metrics exporter: wired before the pool forks.
observability.install(get_settings())
# Predictors beyond the bundled ones register now, before the pool forks: a module that fails to import stops the
# worker at start instead of failing every job of its architecture.
load_configured_predictors()

# Every worker's main process runs a reaper (Redis and the embedded SQLite broker alike, which has no visibility
# timeout): several are safe, each decision being a conditional UPDATE.
_reapers: list[Reaper] = []


@worker_ready.connect
def start_reaper(**_: Any) -> None:
    """Start this worker's job reaper once the worker consumes."""
    reaper = Reaper(get_settings())
    reaper.start()
    _reapers.append(reaper)


@worker_shutdown.connect
def stop_reaper(**_: Any) -> None:
    """Stop the reaper on a warm shutdown."""
    while _reapers:
        _reapers.pop().stop()


@worker_init.connect
def sweep_stale_temp(**_: Any) -> None:
    """At worker start, remove temp files a killed job left (export folders, interrupted blob writes)."""
    sweep_temp(get_settings())
