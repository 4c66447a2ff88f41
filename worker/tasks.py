"""Celery tasks: thin wrappers that take a job id and run the matching idempotent pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Retry

from backend.core.queue import (
    TASK_ATTENTION,
    TASK_CHECK_WEIGHTS,
    TASK_EVALUATE,
    TASK_EXPORT,
    TASK_FUSE,
    TASK_IMPORT,
    TASK_INTERACTIVE,
    TASK_PACS,
    TASK_PREANNOTATE,
    TASK_TRAIN,
)
from worker.celery_app import app
from worker.pipelines import attention, interactive, preannotate, training
from worker.pipelines import check_weights as check_weights_pipeline
from worker.pipelines import evaluate as evaluate_pipeline
from worker.pipelines import export as export_pipeline
from worker.pipelines import fuse as fuse_pipeline
from worker.pipelines import import_case as import_case_pipeline
from worker.pipelines import pacs_retrieve as pacs_pipeline
from worker.pipelines.common import JobBusy, TransientError

RETRY: dict[str, Any] = {
    "autoretry_for": (TransientError,),
    "retry_backoff": 5,
    "retry_backoff_max": 120,
    "max_retries": 5,
    "acks_late": True,
    "bind": True,
}


def _run(task: Task, pipeline: Callable[[int], None], job_id: int) -> None:
    """Run a pipeline; a job another live worker holds is delivered again later, never acknowledged and dropped.

    The copy is published before this delivery is acknowledged (as ``Task.retry`` does), with the retry count
    unchanged: waiting for a live worker is not a failure and must never exhaust the transient-error retries.
    """
    try:
        pipeline(job_id)
    except JobBusy as busy:
        again = task.signature_from_request(countdown=busy.retry_in_s)
        again.apply_async()
        raise Retry(str(busy), when=busy.retry_in_s, sig=again) from None


@app.task(name=TASK_PREANNOTATE, **RETRY)
def preannotate_task(self: Task, job_id: int) -> None:
    """Pre-annotate one scan with one model version."""
    _run(self, preannotate.run, job_id)


@app.task(name=TASK_ATTENTION, **RETRY)
def attention_task(self: Task, job_id: int) -> None:
    """Compute a scan's attention maps and priorities from ≥ 2 model predictions."""
    _run(self, attention.run, job_id)


@app.task(name=TASK_TRAIN, **RETRY)
def train_task(self: Task, job_id: int) -> None:
    """Fine-tune a model and decide on promotion."""
    _run(self, training.run, job_id)


@app.task(name=TASK_CHECK_WEIGHTS, **RETRY)
def check_weights_task(self: Task, job_id: int) -> None:
    """Check uploaded weights against their model's architecture (strict load, one forward pass)."""
    _run(self, check_weights_pipeline.run, job_id)


@app.task(name=TASK_EXPORT, **RETRY)
def export_task(self: Task, job_id: int) -> None:
    """Write a dataset export (PanTS, nnU-Net, MSD, DICOM SEG) and store its archive."""
    _run(self, export_pipeline.run, job_id)


@app.task(name=TASK_EVALUATE, **RETRY)
def evaluate_task(self: Task, job_id: int) -> None:
    """Score an evaluation run's predictions against approved ground truth."""
    _run(self, evaluate_pipeline.run, job_id)


@app.task(name=TASK_FUSE, **RETRY)
def fuse_task(self: Task, job_id: int) -> None:
    """Fuse a reader set's versions (majority vote or STAPLE) into a `fusion` label version."""
    _run(self, fuse_pipeline.run, job_id)


@app.task(name=TASK_IMPORT, **RETRY)
def import_case_task(self: Task, job_id: int) -> None:
    """Import one case of a dataset import run (its CT, masks, version and QA) in one transaction."""
    _run(self, import_case_pipeline.run, job_id)


@app.task(name=TASK_PACS, **RETRY)
def pacs_task(self: Task, job_id: int) -> None:
    """Retrieve a series from the project's PACS into a scan (WADO-RS), or send a version as DICOM SEG (STOW-RS)."""
    _run(self, pacs_pipeline.run, job_id)


# A click: acknowledged on receipt and never retried (its caller waits seconds at most; a message that expired
# while queued is dropped by Celery), no job row, no result.
@app.task(name=TASK_INTERACTIVE, acks_late=False, ignore_result=True)
def interactive_task(message: dict[str, Any]) -> None:
    """Answer a click request (or warm-up) of the interactive queue."""
    interactive.handle(message)
