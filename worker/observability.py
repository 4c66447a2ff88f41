"""Worker observability: job metrics from Celery's task signals, the job id in every log line of a task, JSON
logs, and the worker's own /metrics exporter (MASKLOOP_WORKER_METRICS_PORT).

With prefork, tasks run in child processes: their metrics go to files in the multiprocess folder (prepared here,
before the pool forks) and the main process's exporter sums them at each scrape.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from celery import Task
from celery.signals import (
    setup_logging,
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from prometheus_client import make_wsgi_app

from backend.core.config import Settings, get_settings
from backend.core.db import session_scope
from backend.jobs import service as jobs
from backend.observability import metrics
from backend.observability.context import set_job_id
from backend.observability.logs import configure_logging

log = logging.getLogger(__name__)

# Task id -> start time of the runs in flight in this process (one at a time per prefork child).
_started: dict[str, float] = {}
_exporters: list[WSGIServer] = []

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def job_kind(task: Any) -> str:
    """The job kind a task runs: its name without the `maskloop.` prefix (maskloop.preannotate -> preannotate)."""
    name = str(getattr(task, "name", "") or "unknown")
    return name.removeprefix("maskloop.")


def _job_id(args: Any) -> int | None:
    """The job id of a task's arguments (every maskloop task takes one first)."""
    if isinstance(args, list | tuple) and args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return int(args[0])
    return None


def _job_status(job_id: int | None) -> str:
    """The job's status after a run (its outcome), or `unknown` when it cannot be read; a task without a job
    (an interactive click) succeeded."""
    if job_id is None:
        return "succeeded"
    try:
        with session_scope() as db:
            return str(jobs.get_job(db, job_id).status)
    except Exception as exc:
        log.warning("job %s: its status could not be read for the metrics: %s", job_id, exc)
        return "unknown"


def bind_job(args: Any = None, **_: Any) -> None:
    """A run starts: its job id goes into every log line until it ends."""
    set_job_id(_job_id(args))


def unbind_job(**_: Any) -> None:
    """A run ended: later log lines belong to no job."""
    set_job_id(None)


def on_task_prerun(task_id: str | None = None, task: Task | None = None, **_: Any) -> None:
    """A run starts: start its clock and count it."""
    if task_id is not None:
        _started[task_id] = time.perf_counter()
    metrics.job_metrics().starts.labels(job_kind(task)).inc()


def on_task_postrun(
    task_id: str | None = None, task: Task | None = None, args: Any = None, state: str | None = None, **_: Any
) -> None:
    """A run ended: observe its duration under the job's outcome; count a job that ended failed."""
    started = _started.pop(task_id, None) if task_id is not None else None
    if started is None:
        return
    kind = job_kind(task)
    if state == "RETRY":
        outcome = "retry"
    elif state == "FAILURE":
        outcome = "error"
    else:
        outcome = _job_status(_job_id(args))
    job = metrics.job_metrics()
    job.duration.labels(kind, outcome).observe(time.perf_counter() - started)
    if outcome == "failed":
        job.failures.labels(kind, "job_failed").inc()


def on_task_failure(sender: Task | None = None, exception: BaseException | None = None, **_: Any) -> None:
    """The task itself failed (a time limit, exhausted retries, a bug outside the job's own error handling)."""
    metrics.job_metrics().failures.labels(job_kind(sender), type(exception).__name__).inc()


def on_task_retry(sender: Task | None = None, reason: Any = None, **_: Any) -> None:
    """A run was handed back to the queue: after a transient error, or deferred while another worker holds it."""
    cause = getattr(reason, "exc", None)
    label = type(cause).__name__ if isinstance(cause, BaseException) else "deferred"
    metrics.job_metrics().retries.labels(job_kind(sender), label).inc()


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the worker's log."""


def exporter_app(settings: Settings) -> WsgiApp:
    """The exporter's WSGI app: this host's worker metrics and the queue depths, behind the metrics token."""
    token = settings.metrics_token.get_secret_value()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        offered = str(environ.get("HTTP_AUTHORIZATION", "")).removeprefix("Bearer ")
        if token and not hmac.compare_digest(offered.encode(), token.encode()):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"GET /metrics needs 'Authorization: Bearer <MASKLOOP_METRICS_TOKEN>'\n"]
        return make_wsgi_app(metrics.scrape_registry(settings))(environ, start_response)

    return app


def start_exporter(settings: Settings) -> WSGIServer:
    """Serve /metrics on worker_metrics_addr:worker_metrics_port from a daemon thread of this process."""
    server = make_server(
        settings.worker_metrics_addr,
        settings.worker_metrics_port,
        exporter_app(settings),
        _ThreadingServer,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="metrics-exporter", daemon=True).start()
    _exporters.append(server)
    log.info("worker metrics at http://%s:%s/metrics", settings.worker_metrics_addr, server.server_port)
    return server


def on_worker_ready(**_: Any) -> None:
    """In the worker's main process, once its pool runs: start the exporter when a port is set."""
    settings = get_settings()
    if settings.metrics_enabled and settings.worker_metrics_port:
        start_exporter(settings)


def on_worker_shutdown(**_: Any) -> None:
    """Stop the exporter on a warm shutdown."""
    while _exporters:
        server = _exporters.pop()
        server.shutdown()
        server.server_close()


def on_process_shutdown(**_: Any) -> None:
    """A pool child exits: drop its live-gauge files (its counters and histograms keep counting)."""
    metrics.mark_process_dead(os.getpid())


def on_setup_logging(**_: Any) -> None:
    """Celery calls this instead of setting up its own logging: one JSON handler on the root logger."""
    configure_logging(get_settings())


def install(settings: Settings) -> None:
    """Connect the worker's observability to Celery's signals (at import of the Celery app, before any fork)."""
    if settings.log_format == "json":
        setup_logging.connect(on_setup_logging, weak=False)
    task_prerun.connect(bind_job, weak=False)
    if settings.metrics_enabled:
        metrics.prepare_process(settings)
        task_prerun.connect(on_task_prerun, weak=False)
        task_postrun.connect(on_task_postrun, weak=False)
        task_failure.connect(on_task_failure, weak=False)
        task_retry.connect(on_task_retry, weak=False)
        worker_ready.connect(on_worker_ready, weak=False)
        worker_shutdown.connect(on_worker_shutdown, weak=False)
        worker_process_shutdown.connect(on_process_shutdown, weak=False)
    task_postrun.connect(unbind_job, weak=False)  # after the metrics: their warnings still name the job
