"""Killed-worker recovery with default settings on Redis: seconds from SIGKILL to `succeeded` with one version."""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path

from bench import Row

GOAL_S = 180.0


def run() -> list[Row]:
    """Start a victim worker holding a job and a survivor, SIGKILL the victim, time the job's recovery."""
    from tests.integration import test_job_recovery as t
    from tests.integration.worker_stack import build_stack

    with tempfile.TemporaryDirectory() as tmp, build_stack(Path(tmp)) as stack:
        # The default recovery settings for the workers (worker_stack shortens them for the tests).
        stack.env.pop("MASKLOOP_JOB_STALE_AFTER_S")
        stack.env.pop("MASKLOOP_BROKER_VISIBILITY_TIMEOUT_S")
        held = t._hold_a_job(stack, "prefork")
        stack.kill_worker(held["victim"], signal.SIGKILL)
        killed = time.monotonic()
        done = stack.wait_job(held["job"]["id"], timeout=GOAL_S + 60)
        elapsed = time.monotonic() - killed
        ok = done["status"] == "succeeded" and len(t._versions(stack, held["scan_id"])) == 1
    value = elapsed if ok else float("inf")
    return [
        Row(
            "killed_worker_recovery_s",
            "SIGKILLed worker's job recovered (default settings, Redis)",
            round(value, 1),
            "s",
            f"≤ {GOAL_S:.0f}",
            value <= GOAL_S,
        )
    ]
