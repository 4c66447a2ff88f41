"""Prometheus metrics of the API and the workers, and their exposition (multiprocess mode where processes fork).

Where several processes of one host serve (uvicorn `--workers`, Celery prefork children) each writes its values to
files in `prometheus_multiproc_dir` and a scrape sums them (prometheus_client's multiprocess mode); the folder must
be chosen before the first metric exists, so every metric here is made on first use, after `prepare_process`.
Queue depth is read from the broker at scrape time (kombu's queue size: Redis list lengths, or the embedded SQLite
broker's visible messages), so it is true for both deployments and never stale.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import prometheus_client
from kombu import Connection
from kombu.exceptions import ChannelError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess, values
from prometheus_client.core import GaugeMetricFamily, Metric

from backend.core.config import Settings
from backend.core.queue import WORKER_QUEUES

log = logging.getLogger(__name__)

# The classic text format (0.0.4): every Prometheus release scrapes it.
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_PLAIN_0_0_4
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: API requests from a few ms (a worklist page) to tens of seconds (a large upload).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Seconds: jobs from a classical pre-annotation (under a second) to a training run (hours).
JOB_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)
UNMATCHED_ROUTE = "<unmatched>"  # requests that matched no route are one series, not one per probed path

_prepare_lock = threading.Lock()
_prepared = False


def prepare_process(settings: Settings) -> None:
    """Choose where this process keeps its metric values, once, before its first metric is made: in files under
    `prometheus_multiproc_dir` (or an inherited PROMETHEUS_MULTIPROC_DIR) when set, else in memory."""
    global _prepared
    with _prepare_lock:
        if _prepared:
            return
        if settings.prometheus_multiproc_dir is not None:
            settings.prometheus_multiproc_dir.mkdir(parents=True, exist_ok=True)
            os.environ[MULTIPROC_ENV] = str(settings.prometheus_multiproc_dir.resolve())
        if multiprocess_dir() is not None and not getattr(values.ValueClass, "_multiprocess", False):
            # prometheus_client picks its value class when it is first imported; this process learnt the folder
            # from its settings after that, and no metric exists yet.
            values.ValueClass = values.get_value_class()
        prometheus_client.disable_created_metrics()  # `_created` series double the count and nobody graphs them
        _prepared = True


def multiprocess_dir() -> Path | None:
    """The folder shared by this host's processes, or None when this process counts alone."""
    folder = os.environ.get(MULTIPROC_ENV)
    return Path(folder) if folder else None


@dataclass(frozen=True)
class HttpMetrics:
    """What the API middleware records for each request."""

    requests: Counter
    duration: Histogram


@dataclass(frozen=True)
class JobMetrics:
    """What the workers record for each task run."""

    starts: Counter
    duration: Histogram
    failures: Counter
    retries: Counter


@lru_cache(maxsize=1)
def http_metrics() -> HttpMetrics:
    """The API's request metrics (made once per process, after `prepare_process`)."""
    return HttpMetrics(
        requests=Counter(
            "maskloop_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
        ),
        duration=Histogram(
            "maskloop_http_request_duration_seconds",
            "Time from a request's arrival to its last response byte, by method and route template.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
        ),
    )


@lru_cache(maxsize=1)
def job_metrics() -> JobMetrics:
    """The workers' job metrics (made once per process, after `prepare_process`)."""
    return JobMetrics(
        starts=Counter("maskloop_job_starts", "Task runs started, by job kind.", ["kind"]),
        duration=Histogram(
            "maskloop_job_duration_seconds",
            "Wall time of one task run, by job kind and outcome (the job's status after the run: succeeded, "
            "failed, cancelled; retry when it was handed back to the queue; error when the task itself failed).",
            ["kind", "outcome"],
            buckets=JOB_BUCKETS,
        ),
        failures=Counter(
            "maskloop_job_failures",
            "Failed jobs and tasks, by job kind and cause (job_failed: the job ended failed; else the exception "
            "that failed the task, e.g. a time limit or exhausted retries).",
            ["kind", "cause"],
        ),
        retries=Counter(
            "maskloop_job_retries",
            "Task runs handed back to the queue, by job kind and reason (TransientError: the database or broker "
            "was briefly away; deferred: another live worker holds the job).",
            ["kind", "reason"],
        ),
    )


def _broker_options(url: str) -> dict[str, Any]:
    """Socket timeouts for a Redis broker (the SQLite broker is a local file and takes none)."""
    if url.startswith(("redis://", "rediss://")):
        return {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
    return {}


def _sqlite_broker_folder(url: str) -> None:
    """The embedded SQLite broker's folder exists (kombu creates the file, not its folder; `maskloop serve`
    makes it too), so a fresh embedded deployment is not reported down for want of an empty folder."""
    prefix = "sqla+sqlite:///"
    if url.startswith(prefix) and url[len(prefix) :] not in ("", ":memory:"):
        Path(url[len(prefix) :].split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)


def queue_depths(broker_url: str, timeout_s: float = 2.0) -> dict[str, int]:
    """Messages waiting in each queue of the broker (raises when the broker cannot be reached)."""
    _sqlite_broker_folder(broker_url)
    depths: dict[str, int] = {}
    with Connection(broker_url, connect_timeout=timeout_s, transport_options=_broker_options(broker_url)) as conn:
        conn.ensure_connection(max_retries=0, timeout=timeout_s)
        channel = conn.default_channel
        for queue in WORKER_QUEUES:
            try:
                depths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except ChannelError:  # Redis keeps no key for an empty queue
                depths[queue] = 0
    return depths


class QueueDepthCollector:
    """`maskloop_queue_depth{queue}` and `maskloop_broker_up`, read from the broker when scraped."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url

    def describe(self) -> Iterable[Metric]:
        """The families this collector yields (so registering it does not touch the broker)."""
        return self._families({}, up=False)

    def collect(self) -> Iterable[Metric]:
        """Read the queue depths now; a broker that cannot be reached gives broker_up 0 and no depths."""
        try:
            depths = queue_depths(self.broker_url)
        except Exception as exc:
            log.warning("queue depth: the broker cannot be reached: %s", exc)
            return self._families({}, up=False)
        return self._families(depths, up=True)

    @staticmethod
    def _families(depths: dict[str, int], up: bool) -> list[Metric]:
        depth = GaugeMetricFamily(
            "maskloop_queue_depth",
            "Task messages waiting in each broker queue (not yet taken by a worker).",
            labels=["queue"],
        )
        for queue, count in depths.items():
            depth.add_metric([queue], count)
        broker = GaugeMetricFamily("maskloop_broker_up", "1 when the broker answered this scrape, else 0.")
        broker.add_metric([], 1.0 if up else 0.0)
        return [depth, broker]


class _ThisProcess:
    """The default registry's metrics (this process alone), forwarded into a scrape's registry."""

    def collect(self) -> Iterator[Metric]:
        """Every metric of the process-wide default registry."""
        yield from prometheus_client.REGISTRY.collect()


def scrape_registry(settings: Settings) -> CollectorRegistry:
    """The registry one scrape renders: every process's files in multiprocess mode (else this process's
    metrics), plus the queue depths read from the broker now."""
    registry = CollectorRegistry()
    folder = multiprocess_dir()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        multiprocess.MultiProcessCollector(registry, path=str(folder))
    else:
        registry.register(_ThisProcess())
    registry.register(QueueDepthCollector(settings.resolved_broker_url))
    return registry


def render(settings: Settings) -> bytes:
    """The metrics in Prometheus text format."""
    return generate_latest(scrape_registry(settings))


def mark_process_dead(pid: int) -> None:
    """Drop an exited process's live-gauge files (multiprocess mode; its counters keep counting)."""
    folder = multiprocess_dir()
    if folder is not None:
        multiprocess.mark_process_dead(pid, str(folder))
