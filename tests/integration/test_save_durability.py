"""A label save's blobs are durable (file, then folder, fsynced) before the version's rows exist, and a save whose
blobs cannot be made durable leaves no row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from backend.core.blobstore import LocalBlobStore, sha256_hex
from backend.imaging.nifti import to_nifti_gz
from backend.labels import service as labels
from backend.labels.service.masks import load_manifest
from backend.models import LabelVersion, Scan
from backend.scans import service as scans
from tests.conftest import World
from tests.factories import small_phantom
from tests.fsync_log import FsyncLog, fsyncs

__all__ = ["fsyncs"]  # the fixture


def _scan(db: Session, blobs: LocalBlobStore, world: World) -> tuple[Scan, dict[str, np.ndarray]]:
    phantom = small_phantom(seed=4)
    lead = world.users["lead"]
    scan = scans.import_nifti(db, blobs, world.project, lead, to_nifti_gz(phantom.volume, phantom.affine), "d.nii.gz")
    return scan, phantom.masks


def _stored_digests(blobs: LocalBlobStore, version: LabelVersion) -> list[str]:
    digests = []
    for row in version.structures:
        if row.manifest_digest is not None:
            digests.append(row.manifest_digest)
            digests.extend(entry.digest for entry in load_manifest(blobs, row.manifest_digest).entries)
    return digests


def test_every_blob_of_a_save_is_durable_before_its_rows_commit(
    db: Session, world: World, tmp_path: Path, fsyncs: FsyncLog
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    scan, masks = _scan(db, blobs, world)
    db.commit()
    seen: list[int] = []
    # How far the fsyncs had got when the version's transaction committed.
    event.listen(db, "after_commit", lambda _session: seen.append(len(fsyncs.events)))
    # A slow disk: folder fsyncs still running when the rows are ready show up as a commit that did not wait.
    fsyncs.folder_delay_s = 0.02
    version = labels.create_version(
        db, blobs, scan, author=labels.Author(world.users["lead"].id), kind="import", masks=masks
    )
    # The blobs are readable as soon as the save returns (QA reads them before the commit).
    digests = _stored_digests(blobs, version)
    assert len(digests) > len(masks)
    db.commit()
    durable = FsyncLog(events=fsyncs.events[: seen[-1]], sizes=fsyncs.sizes)
    for digest in digests:
        path = blobs.local_path(digest)
        assert path is not None
        durable.assert_durable(path)


def test_a_failed_folder_fsync_fails_the_commit(db: Session, world: World, tmp_path: Path, fsyncs: FsyncLog) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    scan, masks = _scan(db, blobs, world)
    db.commit()
    versions = db.scalar(select(func.count()).select_from(LabelVersion))
    fsyncs.fail_folders = True
    labels.create_version(db, blobs, scan, author=labels.Author(world.users["lead"].id), kind="import", masks=masks)
    with pytest.raises(OSError, match="injected"):
        db.commit()
    db.rollback()
    assert db.scalar(select(func.count()).select_from(LabelVersion)) == versions


def test_a_save_whose_blobs_cannot_be_made_durable_leaves_no_row(
    db: Session, world: World, tmp_path: Path, fsyncs: FsyncLog
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    scan, masks = _scan(db, blobs, world)
    versions = db.scalar(select(func.count()).select_from(LabelVersion))
    fsyncs.fail_after = fsyncs.fsync_count() + 3  # a few blobs of the save reach the disk, then it fails
    with pytest.raises(OSError, match="injected"):
        labels.create_version(db, blobs, scan, author=labels.Author(world.users["lead"].id), kind="import", masks=masks)
    assert db.scalar(select(func.count()).select_from(LabelVersion)) == versions
    # What reached the disk before the failure is whole (for gc to sweep); no temp file is left.
    for info in blobs.iter_blobs():
        assert sha256_hex(blobs.get_bytes(info.digest)) == info.digest
    assert list((blobs.root / "tmp").iterdir()) == []


def test_a_commit_retried_after_a_failed_fsync_fails_again(
    db: Session, world: World, tmp_path: Path, fsyncs: FsyncLog
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    scan, masks = _scan(db, blobs, world)
    db.commit()
    versions = db.scalar(select(func.count()).select_from(LabelVersion))
    fsyncs.fail_folders = True
    labels.create_version(db, blobs, scan, author=labels.Author(world.users["lead"].id), kind="import", masks=masks)
    with pytest.raises(OSError, match="injected"):
        db.commit()
    fsyncs.fail_folders = False  # the disk seems fine again: what the failed fsync lost is still unknown
    with pytest.raises(OSError, match="injected"):
        db.commit()
    db.rollback()
    assert db.scalar(select(func.count()).select_from(LabelVersion)) == versions


def test_a_rolled_back_save_does_not_fail_the_sessions_next_commit(
    db: Session, world: World, tmp_path: Path, fsyncs: FsyncLog
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    scan, masks = _scan(db, blobs, world)
    db.commit()
    author = labels.Author(world.users["lead"].id)
    listeners = len(db.dispatch.before_commit)
    fsyncs.fail_folders = True
    labels.create_version(db, blobs, scan, author=author, kind="import", masks=masks)
    db.rollback()  # e.g. QA refused the import: its wait goes with its rows
    fsyncs.fail_folders = False
    version = labels.create_version(db, blobs, scan, author=author, kind="import", masks=masks)
    db.commit()
    assert db.get(LabelVersion, version.id) is not None
    labels.create_version(db, blobs, scan, author=author, kind="import", masks=masks, base_version_id=version.id)
    db.commit()
    # One listener for the session, however many versions it saves.
    assert len(db.dispatch.before_commit) == listeners + 1
