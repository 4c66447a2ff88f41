"""The ids a log line carries: the HTTP request's and the job's, held in context variables.

Each request runs in its own context (the middleware sets the request id; a sync endpoint's thread gets a copy),
and a worker sets the job id around each task, so any logger anywhere below can be traced back to one of them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("maskloop_request_id", default=None)
job_id_var: ContextVar[int | None] = ContextVar("maskloop_job_id", default=None)

# A client's (or proxy's) X-Request-ID is kept when it is short and plain, so it cannot forge log fields or lines.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def new_request_id(offered: str | None = None) -> str:
    """The request id: the one offered by the caller when it is safe to log, else a new random one."""
    if offered and _SAFE_ID.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


def current_ids() -> dict[str, str | int]:
    """The ids bound in this context, for a log line ({} outside requests and jobs)."""
    ids: dict[str, str | int] = {}
    request_id, job_id = request_id_var.get(), job_id_var.get()
    if request_id is not None:
        ids["request_id"] = request_id
    if job_id is not None:
        ids["job_id"] = job_id
    return ids


def set_job_id(job_id: int | None) -> None:
    """Bind (or, with None, clear) the job id of this context: a worker calls it before and after each task."""
    job_id_var.set(job_id)


@contextmanager
def bound_job(job_id: int | None) -> Iterator[None]:
    """Bind a job id for the duration of a block."""
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)
