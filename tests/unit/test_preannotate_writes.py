"""Pre-annotation plumbing: write-behind blob writes (durable before commit) and progress off the hot path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from backend.core.blobstore import LocalBlobStore, sha256_hex
from worker.pipelines.common import BackgroundProgress, Claimed, Reporter, TransientError
from worker.pipelines.preannotate import _WriteBehind


def test_queued_writes_are_visible_and_durable_after_wait(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    payloads = [bytes([i]) * (1000 + i) for i in range(20)]
    with _WriteBehind(store) as behind:
        digests = [behind.put_bytes(data) for data in payloads]
        assert digests == [sha256_hex(data) for data in payloads]
        assert all(behind.exists(d) for d in digests)
        assert behind.get_bytes(digests[3]) == payloads[3]  # waits for that one write
        assert behind.put_bytes(payloads[0]) == digests[0]  # a duplicate is not queued twice
        behind.wait()
        assert all(store.exists(d) and store.get_bytes(d) == p for d, p in zip(digests, payloads, strict=True))
        assert behind.size(digests[5]) == len(payloads[5])


def test_a_failed_write_raises_at_wait(tmp_path: Path) -> None:
    class Broken(LocalBlobStore):
        def put_bytes(self, data: bytes) -> str:
            raise OSError("disk full")

    with _WriteBehind(Broken(tmp_path / "blobs")) as behind:
        behind.put_bytes(b"mask chunk")
        with pytest.raises(OSError, match="disk full"):
            behind.wait()


class _Recording(Reporter):
    """A reporter whose heartbeat is a list (the database round trip is what the thread takes off the hot path)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(Claimed(0, "test"), min_interval_s=0.01)
        self.calls: list[tuple[float, str]] = []
        self.fail = fail

    def update(self, percent: float, message: str, *, force: bool = False) -> None:
        if self.fail:
            raise TransientError("database unreachable")
        self.calls.append((percent, message))
        if percent >= 50:
            self._stop = True  # the job was cancelled meanwhile


def test_background_progress_reports_only_advances_and_passes_on_cancellation() -> None:
    reporter = _Recording()
    with BackgroundProgress(reporter, 10, 90, "windows") as progress:
        progress(0.25)
        time.sleep(0.1)
        calls_after_first = len(reporter.calls)
        time.sleep(0.1)  # no new fraction: no new heartbeat (a hung computation must look hung)
        assert len(reporter.calls) == calls_after_first == 1
        progress(0.5)
        time.sleep(0.1)
    assert reporter.calls == [(30.0, "windows"), (50.0, "windows")]
    assert reporter.should_stop()


def test_background_progress_raises_a_failed_heartbeat_in_the_caller() -> None:
    with pytest.raises(TransientError), BackgroundProgress(_Recording(fail=True), 0, 100, "x") as progress:
        progress(0.1)
        time.sleep(0.1)
        progress(0.2)
