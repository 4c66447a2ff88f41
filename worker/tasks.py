"""Celery tasks: thin wrappers that take a job id and run the matching idempotent pipeline."""

from __future__ import annotations

from typing import Any

from backend.core.queue import TASK_ATTENTION, TASK_EVALUATE, TASK_EXPORT, TASK_FUSE, TASK_PREANNOTATE, TASK_TRAIN
from worker.celery_app import app
from worker.pipelines import attention, preannotate, training
from worker.pipelines import evaluate as evaluate_pipeline
from worker.pipelines import export as export_pipeline
from worker.pipelines import fuse as fuse_pipeline
from worker.pipelines.common import TransientError

RETRY: dict[str, Any] = {
    "autoretry_for": (TransientError,),
    "retry_backoff": 5,
    "retry_backoff_max": 120,
    "max_retries": 5,
    "acks_late": True,
}


@app.task(name=TASK_PREANNOTATE, **RETRY)
def preannotate_task(job_id: int) -> None:
    """Pre-annotate one scan with one model version."""
    preannotate.run(job_id)


@app.task(name=TASK_ATTENTION, **RETRY)
def attention_task(job_id: int) -> None:
    """Compute a scan's attention maps and priorities from ≥ 2 model predictions."""
    attention.run(job_id)


@app.task(name=TASK_TRAIN, **RETRY)
def train_task(job_id: int) -> None:
    """Fine-tune a model and decide on promotion."""
    training.run(job_id)


@app.task(name=TASK_EXPORT, **RETRY)
def export_task(job_id: int) -> None:
    """Write a dataset export (PanTS, nnU-Net, MSD, DICOM SEG) and store its archive."""
    export_pipeline.run(job_id)


@app.task(name=TASK_EVALUATE, **RETRY)
def evaluate_task(job_id: int) -> None:
    """Score an evaluation run's predictions against approved ground truth."""
    evaluate_pipeline.run(job_id)


@app.task(name=TASK_FUSE, **RETRY)
def fuse_task(job_id: int) -> None:
    """Fuse a reader set's versions (majority vote or STAPLE) into a `fusion` label version."""
    fuse_pipeline.run(job_id)
