"""The shared dashboard aggregates agree with the rows they summarise: after saves, approvals, reverts, late
structure rows, raw-SQL saves and deletions (both databases); turnaround after late and deleted transitions
(PostgreSQL); after a bulk load with triggers off (the migration's backfill and `dashboard_rebuild()`); and in a
freshly started process, whose first answer comes from the aggregates without reading a version row."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, event, func, select, text
from sqlalchemy.orm import Session

from backend.core import migrate
from backend.core.db import make_engine
from backend.dashboard import service
from backend.models import (
    DashboardTotal,
    DashboardVolume,
    LabelVersion,
    LabelVersionStructure,
    Project,
    Scan,
    ScanTask,
    TaskTransition,
)
from backend.projects import service as projects
from tests.conftest import World, create_pg_database, drop_pg_database

ROOT = Path(__file__).resolve().parents[2]
both_databases = pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)
Figures = dict[int, tuple[int, int, float | None, float | None]]


@pytest.fixture(autouse=True)
def cold_process_memo() -> Any:
    """Each test starts as a process that has answered nothing yet."""
    service.clear_structure_cache()
    yield
    service.clear_structure_cache()


def _scan(db: Session, project: Project, case_id: str) -> Scan:
    scan = Scan(
        project_id=project.id, case_id=case_id, source_format="nifti", image_digest="0" * 64, image_bytes=1,
        source_dtype="int16", shape=[4, 4, 4], spacing=[1.0, 1.0, 1.0],
        affine=[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], orientation="RAS", slice_count=4,
        voxel_volume_mm3=1.0,
    )  # fmt: skip
    db.add(scan)
    db.flush()
    return scan


def _version(
    db: Session, scan: Scan, volumes: dict[int, float | None], head: bool = True, rows_after_head: bool = False
) -> LabelVersion:
    """A version with these structures (mL; 0 = present but empty, None = missing), moved to head or not; with
    `rows_after_head` its structure rows are written after the head moved (the other flush order)."""
    version = LabelVersion(scan_id=scan.id, kind="human", message="")
    db.add(version)
    db.flush()
    rows = [
        LabelVersionStructure(
            version_id=version.id, structure_id=sid, status="missing" if ml is None else "present",
            manifest_digest=None, voxel_count=0 if not ml else int(ml * 1000), volume_ml=ml or 0.0, changed=True,
        )
        for sid, ml in volumes.items()
    ]  # fmt: skip
    if not rows_after_head:
        db.add_all(rows)
        db.flush()
    if head:
        scan.head_version_id = version.id
        db.flush()
    if rows_after_head:
        db.add_all(rows)
        db.flush()
    return version


def _random_volumes(rng: random.Random, structure_ids: list[int]) -> dict[int, float | None]:
    """Volumes of a random subset of structures, some missing or empty, with ties now and then."""
    out: dict[int, float | None] = {}
    for sid in rng.sample(structure_ids, rng.randint(1, len(structure_ids))):
        roll = rng.random()
        out[sid] = (
            None if roll < 0.08 else 0.0 if roll < 0.15 else round(rng.choice([5.0, 12.5, rng.uniform(0.5, 900)]), 3)
        )
    return out


def _reference(db: Session, project_id: int, basis: str) -> tuple[int, Figures]:
    """(scans with a chosen version, per structure (present, with version, mean, median)) from the raw rows."""
    if basis == "head":
        chosen = db.execute(
            select(Scan.id, Scan.head_version_id).where(
                Scan.project_id == project_id, Scan.head_version_id.is_not(None)
            )
        ).all()
    else:
        chosen = db.execute(
            select(ScanTask.scan_id, ScanTask.approved_version_id).where(
                ScanTask.project_id == project_id, ScanTask.approved_version_id.is_not(None)
            )
        ).all()
    volumes: dict[int, list[float]] = defaultdict(list)
    for _scan_id, version_id in chosen:
        for row in db.scalars(select(LabelVersionStructure).where(LabelVersionStructure.version_id == version_id)):
            if row.status == "present" and row.voxel_count > 0:
                volumes[row.structure_id].append(row.volume_ml)
    figures: Figures = {
        sid: (len(v), len(chosen), statistics.fmean(v), statistics.median(v)) for sid, v in volumes.items() if v
    }
    return len(chosen), figures


def _assert_agrees(answer: Any, with_version: int, figures: Figures) -> None:
    """The served per-structure figures equal the reference (means to rounding, medians exactly)."""
    for s in answer.structures:
        present, _, mean, median = figures.get(s.structure_id, (0, with_version, None, None))
        assert (s.structure_id, s.scans_present, s.scans_with_version) == (s.structure_id, present, with_version)
        assert s.mean_volume_ml == (None if mean is None else pytest.approx(mean, rel=1e-12))
        assert s.median_volume_ml == median


def _check(db: Session, project: Project) -> None:
    """Both bases served from the aggregates agree with the rows, with `fresh=true` and with a second answer."""
    for basis in ("head", "approved"):
        with_version, figures = _reference(db, project.id, basis)
        served = service.structures(db, project, basis=basis)
        _assert_agrees(served, with_version, figures)
        _assert_agrees(service.structures(db, project, basis=basis, fresh=True), with_version, figures)
        again = service.structures(db, project, basis=basis)
        assert again.cached is True
        assert again.structures == served.structures


@pytest.mark.sqlite
@both_databases
def test_structures_follow_saves_approvals_reverts_and_deletions(db: Session, world: World) -> None:
    rng = random.Random(1212)
    project = world.project
    structure_ids = [s.id for s in projects.structures_of(db, project.id)][:8]
    scans = [_scan(db, project, f"A{i:03d}") for i in range(14)]
    versions: dict[int, list[LabelVersion]] = defaultdict(list)
    for scan in scans[:12]:  # two scans never get a version
        for _ in range(rng.randint(1, 2)):
            versions[scan.id].append(_version(db, scan, _random_volumes(rng, structure_ids)))
    first = service.structures(db, project)
    assert first.cached is False
    _check(db, project)

    # Tasks and approvals: some of the head, some of an older version; one task without approval.
    for i, scan in enumerate(scans[:10]):
        approved = versions[scan.id][0].id if i % 3 else scan.head_version_id
        db.add(ScanTask(scan_id=scan.id, project_id=project.id, state="approved", approved_version_id=approved))
    db.add(ScanTask(scan_id=scans[12].id, project_id=project.id, state="new"))
    db.flush()
    _check(db, project)

    # Saves (head moves), a save whose rows come after the head, and one scan's first version.
    for scan in rng.sample(scans[:12], 6):
        versions[scan.id].append(_version(db, scan, _random_volumes(rng, structure_ids)))
    _version(db, scans[3], _random_volumes(rng, structure_ids), rows_after_head=True)
    _version(db, scans[13], {structure_ids[0]: 42.0, structure_ids[1]: 0.0})
    _check(db, project)

    # A revert (head back to the first version), a rewritten structure row, an approval withdrawn and one moved.
    scans[5].head_version_id = versions[scans[5].id][0].id
    row = db.scalars(
        select(LabelVersionStructure).where(
            LabelVersionStructure.version_id == scans[6].head_version_id, LabelVersionStructure.status == "present"
        )
    ).first()
    assert row is not None
    row.volume_ml, row.voxel_count = row.volume_ml + 1.5, row.voxel_count + 1500
    task0 = db.get(ScanTask, scans[0].id)
    task1 = db.get(ScanTask, scans[1].id)
    assert task0 is not None and task1 is not None
    task0.approved_version_id = None
    task1.approved_version_id = scans[1].head_version_id
    db.flush()
    _check(db, project)

    # Deletions: a task (its approval goes), a scan (its versions and rows go by cascade).
    db.execute(delete(ScanTask).where(ScanTask.scan_id == scans[2].id))
    db.execute(delete(Scan).where(Scan.id == scans[4].id))
    db.expire_all()
    _check(db, project)

    # Every scan: nothing is left to count.
    db.execute(delete(Scan).where(Scan.project_id == project.id))
    db.expire_all()
    _check(db, project)
    assert db.scalar(select(func.count()).select_from(DashboardVolume)) == 0
    totals = db.execute(
        select(func.sum(DashboardTotal.scans), func.sum(DashboardTotal.volume_sum)).where(
            DashboardTotal.project_id == project.id
        )
    ).one()
    assert (totals[0], float(totals[1])) == (0, pytest.approx(0.0, abs=1e-9))


def test_raw_sql_saves_are_caught_by_the_triggers(db: Session, world: World) -> None:
    """The benchmark's save (plain SQL, no service) moves the aggregates too."""
    from bench.review_scale import _simulate_save

    rng = random.Random(7)
    project = world.project
    structure_ids = [s.id for s in projects.structures_of(db, project.id)]
    scans = [_scan(db, project, f"R{i}") for i in range(6)]
    for scan in scans:
        _version(db, scan, {sid: round(rng.uniform(1, 100), 2) for sid in structure_ids})
    _check(db, project)
    raw = db.connection().connection.driver_connection
    for scan in scans[:4]:
        _simulate_save(raw, scan.id, rng.randrange(len(structure_ids)))  # type: ignore[arg-type]
    db.expire_all()
    _check(db, project)


def _transition(db: Session, scan: Scan, action: str, to_state: str, at: datetime) -> TaskTransition:
    row = TaskTransition(
        project_id=scan.project_id, scan_id=scan.id, action=action, from_state="x", to_state=to_state, at=at
    )
    db.add(row)
    db.flush()
    return row


def test_turnaround_table_follows_late_and_deleted_transitions(db: Session, world: World) -> None:
    project = world.project
    now = datetime.now(UTC).replace(microsecond=0)
    scans = [_scan(db, project, f"T{i}") for i in range(4)]

    def hours_ago(h: float) -> datetime:
        return now - timedelta(hours=h)

    for i, scan in enumerate(scans):
        _transition(db, scan, "submit", "submitted", hours_ago(100 - i))
        _transition(db, scan, "request_changes", "changes_requested", hours_ago(90 - i))
        _transition(db, scan, "submit", "submitted", hours_ago(60 - i))
        _transition(db, scan, "approve", "approved", hours_ago(50 - i))
    reference = service.turnaround_from_transitions(db, project)
    assert reference.first_review.count == 8 and reference.approval.count == 4
    assert service.turnaround(db, project) == reference
    assert service.turnaround(db, project) == reference  # from this process's memo

    # A transition recorded late (its moment before a decision already counted) moves that decision; and a new one.
    late = _transition(db, scans[0], "submit", "submitted", hours_ago(55))
    _transition(db, scans[1], "submit", "submitted", hours_ago(2))
    _transition(db, scans[1], "request_changes", "changes_requested", hours_ago(1))
    moved = service.turnaround_from_transitions(db, project)
    assert moved.first_review.count == 9 and moved.first_review.mean_s != reference.first_review.mean_s
    assert service.turnaround(db, project) == moved

    # Deleting a submission (scan 0's late one) and a decision (scan 2's approval).
    db.execute(delete(TaskTransition).where(TaskTransition.id == late.id))
    db.execute(delete(TaskTransition).where(TaskTransition.scan_id == scans[2].id, TaskTransition.action == "approve"))
    db.expire_all()
    after = service.turnaround_from_transitions(db, project)
    assert (after.first_review.count, after.approval.count) == (8, 3)
    assert service.turnaround(db, project) == after
    service.clear_structure_cache()
    assert service.turnaround(db, project) == after


@pytest.mark.sqlite
@both_databases
def test_cold_process_answers_from_the_aggregates_without_reading_versions(db: Session, world: World) -> None:
    rng = random.Random(99)
    project = world.project
    structure_ids = [s.id for s in projects.structures_of(db, project.id)]
    for i in range(8):
        _version(db, _scan(db, project, f"C{i}"), _random_volumes(rng, structure_ids))
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = db.get_bind().engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        answer = service.structures(db, project)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert answer.cached is False
    assert not [s for s in statements if "label_version" in s or "FROM scans" in s]
    _assert_agrees(answer, *_reference(db, project.id, "head"))


_SUBPROCESS = """
import json, sys
from sqlalchemy.orm import Session
from backend.core.db import make_engine
from backend.dashboard import service
from backend.models import Project

engine = make_engine(sys.argv[1])
with Session(engine) as db:
    project = db.get(Project, int(sys.argv[2]))
    out = {}
    for basis in ("head", "approved"):
        answer = service.structures(db, project, basis=basis)
        out[basis] = {"cached": answer.cached, "structures": [
            [s.structure_id, s.scans_present, s.scans_with_version, s.mean_volume_ml, s.median_volume_ml]
            for s in answer.structures]}
    turnaround = service.turnaround(db, project, weeks=30)
    out["turnaround"] = [turnaround.first_review.count, turnaround.first_review.median_s,
                         turnaround.approval.count, turnaround.approval.mean_s, len(turnaround.weeks)]
print(json.dumps(out))
"""


def _fresh_process(url: str, project_id: int) -> dict[str, Any]:
    """What a newly started process answers first (its own engine, nothing remembered)."""
    done = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS, url, str(project_id)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _agrees_with_fresh_process(url: str, project_id: int) -> int:
    """A fresh process's first answers equal the raw rows' figures (structures) and the transitions' (turnaround);
    returns how many structure rows were compared."""
    out = _fresh_process(url, project_id)
    compared = 0
    engine = make_engine(url)
    try:
        with Session(engine) as db:
            project = db.get(Project, project_id)
            assert project is not None
            for basis in ("head", "approved"):
                assert out[basis]["cached"] is False
                with_version, figures = _reference(db, project_id, basis)
                assert with_version > 0
                for sid, present, with_v, mean, median in out[basis]["structures"]:
                    compared += 1
                    ref = figures.get(sid, (0, with_version, None, None))
                    assert (present, with_v, median) == (ref[0], with_version, ref[3])
                    assert mean == (None if ref[2] is None else pytest.approx(ref[2], rel=1e-12))
            expected = service.turnaround_from_transitions(db, project, weeks=30)
            assert expected.approval.count > 0
            assert out["turnaround"][0] == expected.first_review.count
            assert out["turnaround"][1] == pytest.approx(expected.first_review.median_s)
            assert out["turnaround"][2] == expected.approval.count
            assert out["turnaround"][3] == pytest.approx(expected.approval.mean_s)
            assert out["turnaround"][4] == len(expected.weeks)
    finally:
        engine.dispose()
    return compared


@pytest.mark.slow
def test_migration_backfills_a_seeded_database_and_a_fresh_process_agrees() -> None:
    """Seed the benchmark's project, go back to revision 0010 (before the aggregates), upgrade: the backfill's
    aggregates equal the rows in a newly started process; a bulk load at head (triggers off) is repaired by
    dashboard_rebuild(). (Seeded at head and downgraded: today's tables cannot write into a revision-0010 schema.)"""
    from bench.review_scale import seed

    name = f"maskloop_dash_aggregates_{os.getpid()}"
    url = create_pg_database(name)
    try:
        migrate.upgrade(url)
        seeded = seed(url, 80)
        migrate.downgrade(url, "0010")
        migrate.upgrade(url)
        assert _agrees_with_fresh_process(url, seeded.project_id) > 0
        # A second bulk load with triggers off, on top: the aggregates lag until dashboard_rebuild() runs.
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text("SET LOCAL session_replication_role = replica"))
                conn.execute(text("UPDATE scans SET head_version_id = head_version_id - 1 WHERE id % 3 = 0"))
            with engine.begin() as conn:
                conn.execute(text("SELECT dashboard_rebuild()"))
        finally:
            engine.dispose()
        assert _agrees_with_fresh_process(url, seeded.project_id) > 0
    finally:
        drop_pg_database(name)


@pytest.mark.sqlite
def test_sqlite_upgrade_backfills_existing_rows(tmp_path: Path) -> None:
    """On the embedded database the upgrade fills the aggregates from rows written before it."""
    from backend.auth import service as auth

    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    migrate.upgrade(url)  # rows written with today's tables, then the schema taken back to before the aggregates
    engine = make_engine(url)
    rng = random.Random(5)
    try:
        with Session(engine) as db:
            admin = auth.create_user(db, "admin@example.org", "correct-horse-battery", "Admin", is_admin=True)
            project = projects.create_project(db, "embedded", "Embedded", admin)
            structure_ids = [s.id for s in projects.structures_of(db, project.id)]
            for i in range(6):
                scan = _scan(db, project, f"S{i}")
                version = _version(db, scan, _random_volumes(rng, structure_ids))
                db.add(
                    ScanTask(scan_id=scan.id, project_id=project.id, state="approved", approved_version_id=version.id)
                )
            db.commit()
            project_id = project.id
        engine.dispose()
        migrate.downgrade(url, "0010")
        migrate.upgrade(url)
        with Session(engine) as db:
            upgraded = db.get(Project, project_id)
            assert upgraded is not None
            _check(db, upgraded)
    finally:
        engine.dispose()
