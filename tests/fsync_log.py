"""A recorder of the blob store's fsyncs and renames (a fake beside the real calls: both still run)."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class FsyncLog:
    """Every fsync and rename the store issued, in order: ('fsync', inode, is_dir) and ('rename', inode)."""

    events: list[tuple[str, int, bool]] = field(default_factory=list)
    sizes: dict[int, int] = field(default_factory=dict)  # inode -> its size when it was last fsynced
    fail_after: int | None = None  # raise on the fsync after this many succeeded
    fail_folders: bool = False  # raise on every fsync of a folder
    folder_delay_s: float = 0.0  # each folder fsync takes this long (a slow disk), recorded once it ended
    folder_syncing: threading.Event = field(default_factory=threading.Event)  # set when a folder fsync begins
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fsync_count(self) -> int:
        """fsyncs recorded so far."""
        return sum(1 for kind, _, _ in self.events if kind == "fsync")

    def synced(self, path: Path) -> bool:
        """Whether the file or folder at path (by inode) was fsynced."""
        inode = path.stat().st_ino
        return any(kind == "fsync" and ino == inode for kind, ino, _ in self.events)

    def index(self, kind: str, path: Path) -> int:
        """Position of the first event of kind on path's inode."""
        inode = path.stat().st_ino
        return next(n for n, (k, ino, _) in enumerate(self.events) if k == kind and ino == inode)

    def assert_durable(self, path: Path) -> None:
        """The blob file at path was fsynced before it was renamed into place, and its folder after the rename."""
        assert path.exists(), f"{path} is not stored"
        assert self.synced(path), f"{path} was never fsynced"
        # What the fsync made durable is the whole content, not what a buffered writer had passed on so far.
        assert self.sizes[path.stat().st_ino] == path.stat().st_size, f"{path} was fsynced before it was written"
        assert self.index("fsync", path) < self.index("rename", path), f"{path} renamed before its content was durable"
        folder = path.parent.stat().st_ino
        last_folder_sync = max(
            (n for n, (k, ino, _) in enumerate(self.events) if k == "fsync" and ino == folder), default=-1
        )
        assert self.index("rename", path) < last_folder_sync, f"{path.parent} not fsynced after the rename"


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[FsyncLog]:
    """Record os.fsync and os.replace calls (a fake beside the real path: both still run)."""
    log = FsyncLog()
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            log.folder_syncing.set()
            time.sleep(log.folder_delay_s)
        with log.lock:
            failing = log.fail_after is not None and log.fsync_count() >= log.fail_after
            if failing or (log.fail_folders and stat.S_ISDIR(st.st_mode)):
                raise OSError(5, "injected fsync failure")
            log.events.append(("fsync", st.st_ino, stat.S_ISDIR(st.st_mode)))
            log.sizes[st.st_ino] = st.st_size
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        inode = os.stat(src).st_ino
        real_replace(src, dst)
        with log.lock:
            log.events.append(("rename", inode, False))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    yield log
