"""Stale temp files: leftovers of killed imports and uploads, removed at API/worker start and periodically."""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from backend.core.blobstore import LocalBlobStore, remove_old_entries
from backend.core.config import Settings

log = logging.getLogger(__name__)

# Temp folders and files maskloop creates in the system temp folder (DICOM uploads, export jobs) start with this.
TEMP_PREFIX = "maskloop-"


@dataclass(frozen=True)
class TempSweep:
    """What one temp sweep removed."""

    files: int
    bytes: int


def sweep_temp(settings: Settings, system_temp: Path | None = None) -> TempSweep:
    """Remove temp files older than settings.temp_max_age_hours: the blob store's tmp/ and maskloop-* temp dirs."""
    max_age_s = settings.temp_max_age_hours * 3600
    files = size = 0
    # Only the local backend writes temp files next to its blobs; a store that does not exist yet has none (and
    # is not created here: tests build many apps whose settings point at folders they never use).
    if settings.blob_backend == "local" and settings.resolved_blob_root.is_dir():
        files, size = LocalBlobStore(settings.resolved_blob_root).remove_stale_temp(max_age_s)
    more, more_size = remove_old_entries(system_temp or Path(tempfile.gettempdir()), max_age_s, prefix=TEMP_PREFIX)
    files, size = files + more, size + more_size
    if files:
        log.warning("removed %d stale temp files (%d bytes) older than %g h", files, size, settings.temp_max_age_hours)
    return TempSweep(files, size)


class TempSweeper:
    """Sweeps at start, then every settings.housekeeping_interval_s on a daemon thread until stop()."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> TempSweeper:
        """Sweep once now; start the periodic thread when an interval is set."""
        self._sweep()
        if self._settings.housekeeping_interval_s > 0:
            self._thread = threading.Thread(target=self._loop, name="maskloop-temp-sweeper", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """End the periodic thread (the app is shutting down)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._settings.housekeeping_interval_s):
            self._sweep()

    def _sweep(self) -> None:
        try:
            sweep_temp(self._settings)
        except OSError:
            # Housekeeping must never take the API down; the next pass (or `maskloop gc`) tries again.
            log.exception("temp file sweep failed")
