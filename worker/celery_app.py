"""The Celery application of maskloop workers (`celery -A worker.celery_app worker -Q gpu,cpu`)."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from backend.core.config import get_settings
from backend.core.queue import QUEUES, configure

app = Celery("maskloop", include=["worker.tasks"])
configure(app, get_settings())
app.conf.task_queues = [Queue(name) for name in QUEUES]
