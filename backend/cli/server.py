"""`maskloop serve`, `worker` and `migrate`: run the API and workers, bring the schema up to date."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import Annotated

import typer
import uvicorn
from pydantic import ValidationError

from backend.cli.common import console
from backend.core import migrate as migrations
from backend.core.config import Settings, get_settings
from backend.core.db import session_scope
from backend.core.queue import INTERACTIVE_QUEUE
from backend.flows import jobs as job_flows


def migrate() -> None:
    """Bring the database schema up to date (SQLite by default, PostgreSQL via MASKLOOP_DATABASE_URL)."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.resolved_database_url)
    console.print(f"database at head: {settings.resolved_database_url.split('@')[-1]}")


def _checked_settings() -> Settings:
    """The settings, or a clear refusal (exit 2) when they are inconsistent (e.g. job recovery timings)."""
    try:
        return get_settings()
    except ValidationError as exc:
        messages = "; ".join(str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
        console.print(f"[red]error:[/red] invalid settings: {messages}")
        raise typer.Exit(code=2) from None


def _worker_command(queues: str, concurrency: int, pool: str | None) -> list[str]:
    """The celery command line of a maskloop worker (the interactive queue alone: a solo pool, so the warm model
    and the cached volumes live in the process that takes the messages)."""
    embedded = get_settings().resolved_broker_url.startswith("sqla+sqlite")
    interactive_only = queues == INTERACTIVE_QUEUE
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        queues,
        "--concurrency",
        str(concurrency),
        "-P",
        pool or ("solo" if embedded or interactive_only else "prefork"),
        "--loglevel",
        "INFO",
        "--hostname",
        f"maskloop-{queues.replace(',', '-')}@%h",
    ]


def _die_with_parent() -> None:
    """In the embedded worker, before exec: have Linux send it SIGTERM when `maskloop serve` dies, however it dies
    (a SIGKILL skips every cleanup), so no orphaned worker keeps polling a database that may be gone."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _resend_unsent_jobs() -> None:
    """Send queued jobs that never reached the broker (it was down when they were created)."""
    with session_scope() as db:
        resent = job_flows.requeue_unsent(db)
    if resent:
        console.print(f"resent {len(resent)} queued jobs to the broker")


def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    reload: Annotated[bool, typer.Option(help="reload on code changes")] = False,
    worker: Annotated[
        bool | None,
        typer.Option(
            "--worker/--no-worker", help="also run a solo worker (default: on with the embedded SQLite broker)"
        ),
    ] = None,
) -> None:
    """Run the API (and the built frontend) with uvicorn; in the embedded default also a solo Celery worker."""
    settings = _checked_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.resolved_database_url)
    start_worker = worker if worker is not None else settings.resolved_broker_url.startswith("sqla+sqlite")
    _resend_unsent_jobs()
    children = []
    if start_worker:
        children.append(subprocess.Popen(_worker_command("gpu,cpu", 1, "solo"), preexec_fn=_die_with_parent))
        if settings.interactive_worker:
            children.append(_interactive_worker(settings))
    try:
        uvicorn.run("backend.main:app", host=host or settings.api_host, port=port or settings.api_port, reload=reload)
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


def _interactive_worker(settings: Settings) -> subprocess.Popen[bytes]:
    """The embedded default's warm worker of the interactive queue: a second solo process (a long pre-annotation
    in the first never delays a click) that polls the SQLite broker every `interactive_poll_s`."""
    env = dict(os.environ)
    if settings.resolved_broker_url.startswith("sqla+") and "MASKLOOP_BROKER_POLL_S" not in env:
        env["MASKLOOP_BROKER_POLL_S"] = str(settings.interactive_poll_s)
    return subprocess.Popen(_worker_command(INTERACTIVE_QUEUE, 1, "solo"), env=env, preexec_fn=_die_with_parent)


def run_worker(
    queues: Annotated[
        str, typer.Option(help="comma-separated queues: gpu, cpu; or interactive (click requests, a solo pool)")
    ] = "gpu,cpu",
    concurrency: Annotated[int, typer.Option(help="tasks at once (1 per GPU)")] = 1,
    pool: Annotated[str | None, typer.Option(help="celery pool: prefork, solo, threads")] = None,
) -> None:
    """Run a Celery worker for the given queues (prefork with Redis, solo with the embedded SQLite broker)."""
    _checked_settings()
    command = _worker_command(queues, concurrency, pool)
    os.execv(command[0], command)
