"""Migration 0004 backfills one task per existing scan, its state taken from the kind of the scan's head version."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from backend.core import migrate
from backend.core.db import make_engine
from backend.models import ScanTask
from tests.conftest import create_pg_database, drop_pg_database

_SCAN_COLUMNS = (
    "project_id, case_id, source_format, source_name, image_digest, image_bytes, source_dtype, shape, spacing, "
    "affine, orientation, slice_count, voxel_volume_mm3, raw_metadata, created_at"
)
_SCAN_VALUES = (
    "1, '{case}', 'nifti', 'x.nii.gz', 'abc', 10, 'int16', '[2, 2, 2]', '[1.0, 1.0, 1.0]', "
    "'[[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]', 'RAS', 2, 1.0, '{{}}', '2026-01-01 00:00:00'"
)


@pytest.fixture(params=["postgresql", "sqlite"])
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database migrated to 0003 (before the workflow tables)."""
    if request.param == "postgresql":
        name = f"maskloop_backfill_{os.getpid()}"
        url = create_pg_database(name)
        try:
            migrate.upgrade(url, "0003")
            yield url
        finally:
            drop_pg_database(name)
    else:
        url = f"sqlite:///{tmp_path / 'old.db'}"
        migrate.upgrade(url, "0003")
        yield url


def test_backfill_gives_every_existing_scan_a_task(old_database: str) -> None:
    engine = make_engine(old_database)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO projects (id, slug, name, description, settings, created_at) "
                    "VALUES (1, 'old', 'Old', '', '{}', '2026-01-01 00:00:00')"
                )
            )
            ids = {}
            for case in ("no-labels", "imported", "predicted", "edited"):
                conn.execute(text(f"INSERT INTO scans ({_SCAN_COLUMNS}) VALUES ({_SCAN_VALUES.format(case=case)})"))
                ids[case] = conn.execute(text(f"SELECT id FROM scans WHERE case_id = '{case}'")).scalar_one()
            for case, kind in (("imported", "import"), ("predicted", "model"), ("edited", "human")):
                conn.execute(
                    text(
                        "INSERT INTO label_versions (scan_id, kind, message, is_branch, new_bytes, created_at) "
                        f"VALUES ({ids[case]}, '{kind}', '', false, 0, '2026-01-01 00:00:00')"
                    )
                )
                version = conn.execute(
                    text(f"SELECT max(id) FROM label_versions WHERE scan_id = {ids[case]}")
                ).scalar_one()
                conn.execute(text(f"UPDATE scans SET head_version_id = {version} WHERE id = {ids[case]}"))
        migrate.upgrade(old_database)
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT scan_id, project_id, state, review_level, priority, active_seconds FROM scan_tasks")
            ).all()
            stamps = conn.execute(text("SELECT count(*) FROM scan_tasks WHERE updated_at IS NOT NULL")).scalar_one()
        with Session(engine) as db:
            task = db.get(ScanTask, ids["edited"])
            assert task is not None
            assert abs(datetime.now(UTC) - task.updated_at) < timedelta(minutes=5)
    finally:
        engine.dispose()
    states = {scan_id: state for scan_id, _, state, _, _, _ in rows}
    assert states == {
        ids["no-labels"]: "new",
        ids["imported"]: "new",
        ids["predicted"]: "pre_annotated",
        ids["edited"]: "annotating",
    }
    assert {(p, level, priority, seconds) for _, p, _, level, priority, seconds in rows} == {(1, 0, 0.0, 0.0)}
    assert stamps == 4
