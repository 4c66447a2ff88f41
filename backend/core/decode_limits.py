"""Per-process limits on decoding uploads: a cap on concurrent heavy decodes, and each upload kind's size limit.

A decode (a NIfTI volume or mask, a DICOM series) briefly holds the whole decoded array, hundreds of MiB for a
CT. Even when each decode is bounded by its header, many at once could exhaust an API process's memory, so the
API process allows `decode_slots` at a time; a decode that finds every slot busy waits up to `decode_wait_s` and
is then answered 503 with Retry-After. The cap is opt-in: `enable_cap()` is called by the API application only,
so workers (which call the same imaging code directly) are never capped.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from backend.core.config import Settings, get_settings
from backend.core.errors import ServiceUnavailable


@dataclass(frozen=True)
class DecodeLimits:
    """The size limits of decoded uploads, per kind."""

    max_scan_voxels: int
    max_decoded_bytes: int


class _Cap:
    """A counting semaphore with a bounded wait, and a count of decodes running (for tests and diagnostics)."""

    def __init__(self, slots: int, wait_s: float) -> None:
        self.slots = slots
        self.wait_s = wait_s
        self._sem = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.running = 0

    @contextlib.contextmanager
    def hold(self, what: str) -> Iterator[None]:
        if not self._sem.acquire(timeout=self.wait_s):
            # Roughly how long one decode takes: ask the client to come back after about that.
            retry = max(1, math.ceil(self.wait_s / 2))
            raise ServiceUnavailable(
                f"{what}: the server is busy decoding {self.slots} other upload(s); nothing was saved, retry "
                f"in {retry} s",
                retry_after=retry,
            )
        with self._lock:
            self.running += 1
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1
            self._sem.release()


_cap: _Cap | None = None
_limits: DecodeLimits | None = None


def limits_from(settings: Settings) -> DecodeLimits:
    """The decode limits that `settings` configure."""
    return DecodeLimits(
        max_scan_voxels=settings.max_scan_voxels,
        max_decoded_bytes=settings.max_decoded_mb * 1024 * 1024,
    )


def configure(settings: Settings) -> None:
    """Use `settings`' limits in this process (the API application calls this with its own settings)."""
    global _limits
    _limits = limits_from(settings)


def current() -> DecodeLimits:
    """This process's decode limits: the configured ones, else those of the process-wide settings."""
    return _limits if _limits is not None else limits_from(get_settings())


def enable_cap(slots: int, wait_s: float) -> None:
    """Cap concurrent heavy decodes in this process (API only); `slots` <= 0 removes the cap."""
    global _cap
    _cap = _Cap(slots, wait_s) if slots > 0 else None


def disable_cap() -> None:
    """Remove the cap (tests; a worker never enables it)."""
    global _cap
    _cap = None


def running() -> int:
    """Heavy decodes holding a slot right now (0 when uncapped)."""
    return _cap.running if _cap is not None else 0


@contextlib.contextmanager
def heavy_decode(what: str) -> Iterator[None]:
    """Hold one decode slot while the block runs (a no-op where no cap is enabled); 503 when none frees in time.

    Not re-entrant by design: call it around the decode of one file, never around a block that takes another.
    """
    cap = _cap
    if cap is None:
        yield
        return
    with cap.hold(what):
        yield


def install(settings: Settings) -> None:
    """Configure this API process: its settings' limits and the cap on concurrent heavy decodes."""
    configure(settings)
    enable_cap(settings.decode_slots, settings.decode_wait_s)
