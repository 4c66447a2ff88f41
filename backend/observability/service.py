"""The readiness check: can this process reach the database, the broker and the blob store right now?

The three checks run side by side, each bounded by `readiness_timeout_s`, so a probe answers within that time
however a dependency fails (refused, unreachable, hung). A check still running then is reported as timed out.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import re
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore, LocalBlobStore
from backend.core.config import Settings
from backend.core.errors import ServiceUnavailable
from backend.observability.metrics import queue_depths

log = logging.getLogger(__name__)

# A digest no blob has in practice: its existence check reads the store without touching any real blob.
PROBE_DIGEST = "0" * 64
CHECKS = ("database", "broker", "blob_store")


class NotReady(ServiceUnavailable):
    """A dependency cannot be reached: 503, with the failed checks named in `details.failed`."""

    code = "not_ready"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check."""

    ok: bool
    seconds: float
    error: str | None = None


@dataclass(frozen=True)
class Readiness:
    """Every check's outcome."""

    checks: dict[str, CheckResult]

    @property
    def failed(self) -> list[str]:
        """The checks that failed, in CHECKS order."""
        return [name for name, result in self.checks.items() if not result.ok]


def check_database(db: Session) -> None:
    """One round trip to the database."""
    db.execute(text("SELECT 1")).scalar_one()


def check_broker(settings: Settings) -> None:
    """Connect to the broker and read its queues' sizes."""
    queue_depths(settings.resolved_broker_url, settings.readiness_timeout_s)


def check_blob_store(blobs: BlobStore) -> None:
    """Reach the blob store: the local folder is there and writable; an S3 bucket exists and answers."""
    if isinstance(blobs, LocalBlobStore):
        if not blobs.root.is_dir():
            raise OSError(f"the blob folder {blobs.root} is missing (is the volume mounted?)")
        with tempfile.NamedTemporaryFile(dir=blobs.root / "tmp", prefix="ready-"):
            pass  # a read-only or full volume fails here
    else:
        client, bucket = getattr(blobs, "client", None), getattr(blobs, "bucket", None)
        if client is not None and bucket:
            client.head_bucket(Bucket=bucket)  # a missing bucket: a missing object would not tell
    blobs.exists(PROBE_DIGEST)


_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")


def _reason(exc: Exception) -> str:
    """A short reason for the answer: the error's class and first line, credentials in URLs masked."""
    message = str(getattr(exc, "message", None) or exc).strip().splitlines()
    first = message[0] if message else ""
    return _CREDENTIALS.sub(r"\1***@", f"{type(exc).__name__}: {first}".rstrip(": "))[:300]


def _timed(name: str, check: Callable[[], None]) -> CheckResult:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:
        log.warning("readiness: %s check failed", name, exc_info=True)
        return CheckResult(False, time.perf_counter() - started, _reason(exc))
    return CheckResult(True, time.perf_counter() - started)


def readiness(db: Session, settings: Settings, blobs: BlobStore) -> Readiness:
    """Run the three checks at once, each within `readiness_timeout_s`."""
    checks: dict[str, Callable[[], None]] = {
        "database": lambda: check_database(db),
        "broker": lambda: check_broker(settings),
        "blob_store": lambda: check_blob_store(blobs),
    }
    timeout = settings.readiness_timeout_s
    pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="readiness")
    try:
        # Each check runs in a copy of this context: its log lines carry the request id.
        futures = {
            name: pool.submit(contextvars.copy_context().run, _timed, name, check) for name, check in checks.items()
        }
        deadline = time.monotonic() + timeout
        results: dict[str, CheckResult] = {}
        for name, future in futures.items():
            try:
                results[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                results[name] = CheckResult(False, timeout, f"no answer within {timeout:g} s")
    finally:
        pool.shutdown(wait=False)  # a hung client ends at its own timeout; the probe answers now
    return Readiness(results)


def require_ready(db: Session, settings: Settings, blobs: BlobStore) -> Readiness:
    """The readiness report when every dependency answered; NotReady naming the failed ones otherwise."""
    report = readiness(db, settings, blobs)
    failed = report.failed
    if failed:
        reasons = "; ".join(f"{name}: {report.checks[name].error}" for name in failed)
        raise NotReady(
            f"not ready: {', '.join(failed)} cannot be reached ({reasons})",
            failed=failed,
            checks={name: dataclasses.asdict(result) for name, result in report.checks.items()},
            retry_after=5,
        )
    return report
