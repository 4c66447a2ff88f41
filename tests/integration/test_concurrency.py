"""Optimistic concurrency on real, committed PostgreSQL transactions: one base, several savers, one winner."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from backend.auth import service as auth
from backend.core import migrate
from backend.core.blobstore import LocalBlobStore
from backend.core.db import make_engine
from backend.core.errors import Conflict
from backend.imaging.nifti import to_nifti_gz
from backend.labels import service as labels
from backend.models import LabelVersion, Scan
from backend.projects import service as projects
from backend.scans import service as scans
from tests.conftest import PASSWORD, create_pg_database, drop_pg_database
from tests.factories import small_phantom


@dataclass
class Committed:
    """A committed scan with one version, in its own database."""

    factory: sessionmaker[Session]
    blobs: LocalBlobStore
    scan_id: int
    base_id: int
    user_id: int


@pytest.fixture
def committed(tmp_path: Path) -> Iterator[Committed]:
    name = f"maskloop_concurrency_{os.getpid()}"
    url = create_pg_database(name)
    migrate.upgrade(url)
    engine: Engine = make_engine(url)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    blobs = LocalBlobStore(tmp_path / "blobs")
    phantom = small_phantom(seed=9)
    with factory() as db:
        user = auth.create_user(db, "saver@example.org", PASSWORD, is_admin=True)
        project = projects.create_project(db, "race", "Race", user)
        scan = scans.import_nifti(db, blobs, project, user, to_nifti_gz(phantom.volume, phantom.affine), "c.nii.gz")
        version = labels.create_version(
            db, blobs, scan, author=labels.Author(user.id), kind="import", masks=phantom.masks
        )
        db.commit()
        ids = (scan.id, version.id, user.id)
    try:
        yield Committed(factory, blobs, *ids)
    finally:
        engine.dispose()
        drop_pg_database(name)


def _save(world: Committed, db: Session, offset: int) -> LabelVersion:
    scan = db.get(Scan, world.scan_id)
    assert scan is not None
    box = np.ones((2, 2, 2), dtype=bool)
    return labels.save_patch(
        db,
        world.blobs,
        scan,
        author=labels.Author(world.user_id),
        base_version_id=world.base_id,
        patches=[labels.BoxPatch("liver", (offset, offset, 1), box)],
        message=f"saver {offset}",
    )


def _version_count(world: Committed) -> int:
    with world.factory() as db:
        return int(db.scalar(select(func.count(LabelVersion.id)).where(LabelVersion.scan_id == world.scan_id)) or 0)


def test_many_concurrent_saves_on_one_base_exactly_one_wins(committed: Committed) -> None:
    savers = 6
    barrier = threading.Barrier(savers)
    outcomes: list[object] = [None] * savers

    def run(index: int) -> None:
        with committed.factory() as db:
            barrier.wait()
            try:
                version = _save(committed, db, index + 1)
                db.commit()
                outcomes[index] = version.id
            except Conflict as exc:
                db.rollback()
                outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(savers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    winners = [o for o in outcomes if isinstance(o, int)]
    conflicts = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(winners) == 1
    assert len(conflicts) == savers - 1
    assert all(c.details["head_version_id"] == winners[0] for c in conflicts)
    with committed.factory() as db:
        assert db.get(Scan, committed.scan_id).head_version_id == winners[0]  # type: ignore[union-attr]
    assert _version_count(committed) == 2


def test_conditional_update_catches_a_saver_that_passed_the_early_check(committed: Committed) -> None:
    """B reads the old head while A's save is uncommitted; A commits; B's conditional UPDATE must refuse."""
    first = committed.factory()
    winner = _save(committed, first, 1)  # holds the scan row lock until commit
    result: dict[str, object] = {}

    def late_saver() -> None:
        with committed.factory() as db:
            try:
                result["version"] = _save(committed, db, 2).id
                db.commit()
            except Conflict as exc:
                db.rollback()
                result["conflict"] = exc

    thread = threading.Thread(target=late_saver)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive(), "the late saver should be waiting on the scan row lock"
    first.commit()
    first.close()
    thread.join(timeout=30)
    assert "version" not in result
    conflict = result["conflict"]
    assert isinstance(conflict, Conflict)
    assert conflict.details["head_version_id"] == winner.id
    assert _version_count(committed) == 2
