"""Lead dashboard: known answers on a small hand-built project, permissions, bad input, and the scale seed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend.core import migrate
from backend.core.db import make_engine
from backend.dashboard import service
from backend.models import (
    ActivityDaily,
    LabelVersion,
    LabelVersionStructure,
    Model,
    ModelVersion,
    Project,
    QAFinding,
    ReaderSet,
    Review,
    Scan,
    ScanTask,
    TaskTransition,
    TrainingRound,
)
from backend.projects import service as projects
from tests.conftest import World, create_pg_database, drop_pg_database

ENDPOINTS = [
    "summary",
    "sites",
    "phases",
    "structures",
    "throughput",
    "editing-time",
    "turnaround",
    "agreement",
    "model-rounds",
    "qa",
]
HOUR = 3600.0
# The known-answer tests run on PostgreSQL (SQL percentiles, JSON unnested in the database) and on the embedded
# SQLite default (the same statistics computed in Python).
both_databases = pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)


@pytest.fixture(autouse=True)
def no_cached_structures() -> Iterator[None]:
    """Each test starts without cached structure statistics."""
    service.clear_structure_cache()
    yield
    service.clear_structure_cache()


def _scan(db: Session, project: Project, case_id: str, site: str | None, phase: str | None) -> Scan:
    scan = Scan(
        project_id=project.id,
        case_id=case_id,
        source_format="nifti",
        image_digest="0" * 64,
        image_bytes=1,
        source_dtype="int16",
        shape=[4, 4, 4],
        spacing=[1.0, 1.0, 1.0],
        affine=[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
        orientation="RAS",
        slice_count=4,
        voxel_volume_mm3=1.0,
        site=site,
        phase=phase,
    )
    db.add(scan)
    db.flush()
    return scan


def _task(db: Session, scan: Scan, state: str, **fields: Any) -> ScanTask:
    task = ScanTask(scan_id=scan.id, project_id=scan.project_id, state=state, **fields)
    db.add(task)
    db.flush()
    return task


def _version(db: Session, scan: Scan, volumes: dict[str, float | None], head: bool = True) -> LabelVersion:
    """A version with the named structures: a volume (mL; 0 = present but empty) or None = missing."""
    version = LabelVersion(scan_id=scan.id, kind="human", message="")
    db.add(version)
    db.flush()
    ids = {s.name: s.id for s in projects.structures_of(db, scan.project_id)}
    for name, ml in volumes.items():
        db.add(
            LabelVersionStructure(
                version_id=version.id,
                structure_id=ids[name],
                status="missing" if ml is None else "present",
                manifest_digest=None,
                voxel_count=0 if not ml else int(ml * 1000),
                volume_ml=ml or 0.0,
                changed=True,
            )
        )
    db.flush()
    if head:
        scan.head_version_id = version.id
        db.flush()
    return version


class Built:
    """The hand-built project: scans by name, the clock and the events that drive the expectations."""

    def __init__(self, world: World, db: Session) -> None:
        self.world = world
        self.now = datetime.now(UTC)
        self.scans: dict[str, Scan] = {}
        self.submits: list[datetime] = []
        self.reviews: list[tuple[datetime, str]] = []
        self.structure_ids = {s.name: s.id for s in projects.structures_of(db, world.project.id)}

    def at(self, hours_ago: float) -> datetime:
        """A moment some hours before the build."""
        return self.now - timedelta(hours=hours_ago)


@pytest.fixture
def built(db: Session, world: World) -> Built:
    """Six scans over sites, phases and states, with versions, history, activity, QA, reader sets and a model."""
    b = Built(world, db)
    p = world.project
    ann, rev, lead = world.users["annotator"].id, world.users["reviewer"].id, world.users["lead"].id
    s1 = b.scans["s1"] = _scan(db, p, "S1", "site_a", "venous")
    s2 = b.scans["s2"] = _scan(db, p, "S2", "site_a", "arterial")
    s3 = b.scans["s3"] = _scan(db, p, "S3", "site_b", "venous")
    b.scans["s4"] = _scan(db, p, "S4", "site_b", None)  # no task row: counts as new
    s5 = b.scans["s5"] = _scan(db, p, "S5", None, "venous")
    s6 = b.scans["s6"] = _scan(db, p, "S6", "site_a", "venous")

    older = _version(db, s1, {"liver": 999.0}, head=False)
    v1 = _version(db, s1, {"liver": 10.0, "pancreas": 20.0, "spleen": 0.0, "kidney_left": None})
    _version(db, s2, {"liver": 30.0, "pancreas": None})

    _task(db, s1, "approved", active_seconds=900.0, approved_version_id=older.id, assignee_user_id=ann)
    _task(db, s2, "in_review", review_level=1, assignee_user_id=ann)
    _task(
        db, s3, "annotating", active_seconds=400.0, assignee_user_id=ann, lease_user_id=ann,
        lease_expires_at=b.now + timedelta(minutes=10),
    )  # fmt: skip
    _task(db, s5, "adjudication", active_seconds=100.0)
    _task(db, s6, "submitted", active_seconds=5000.0, lease_user_id=ann, lease_expires_at=b.at(1))

    def transition(scan: Scan, action: str, hours_ago: float, actor: int, to_state: str) -> None:
        at = b.at(hours_ago)
        db.add(
            TaskTransition(
                project_id=p.id, scan_id=scan.id, action=action, from_state="x", to_state=to_state,
                actor_user_id=actor, at=at,
            )
        )  # fmt: skip
        if action == "submit":
            b.submits.append(at)
        if action in ("approve", "request_changes"):
            db.add(
                Review(
                    project_id=p.id, scan_id=scan.id, version_id=v1.id, reviewer_user_id=rev, review_level=1,
                    decision=action, created_at=at,
                )
            )  # fmt: skip
            b.reviews.append((at, action))

    # S1: submitted, changes requested 10 h later, resubmitted, approved 4 h later (cycle: 24 h).
    transition(s1, "submit", 50, ann, "submitted")
    transition(s1, "request_changes", 40, rev, "changes_requested")
    transition(s1, "start", 39, ann, "annotating")
    transition(s1, "submit", 30, ann, "submitted")
    transition(s1, "approve", 26, rev, "approved")
    # S2: in review, no decision yet. S5: sent to adjudication.
    transition(s2, "submit", 20, ann, "submitted")
    transition(s2, "start_review", 19, rev, "in_review")
    transition(s5, "submit", 10, ann, "submitted")
    transition(s5, "adjudicate", 9, lead, "adjudication")
    # S6: approved after 10 h, reopened, approved again after 2 h, reopened and resubmitted.
    transition(s6, "submit", 110, ann, "submitted")
    transition(s6, "approve", 100, rev, "approved")
    transition(s6, "reopen", 90, lead, "annotating")
    transition(s6, "submit", 60, ann, "submitted")
    transition(s6, "approve", 58, rev, "approved")
    transition(s6, "reopen", 57, lead, "annotating")
    transition(s6, "submit", 5, ann, "submitted")

    today = b.now.date()
    for scan, day, seconds, saves in [
        (s1, today - timedelta(days=2), 600.0, 2),
        (s3, today - timedelta(days=2), 300.0, 1),
        (s3, today - timedelta(days=1), 100.0, 1),
        (s6, today - timedelta(days=40), 5000.0, 3),
    ]:
        db.add(
            ActivityDaily(
                project_id=p.id, scan_id=scan.id, user_id=ann, day=day, active_seconds=seconds, saves=saves
            )
        )  # fmt: skip

    ids = b.structure_ids
    for scan, structure, rule, severity, status in [
        (s1, "liver", "small_lesion", "warning", "open"),
        (s2, None, "structure_missing", "error", "open"),
        (s1, "pancreas", "outside_parent", "warning", "resolved"),
    ]:
        db.add(
            QAFinding(
                project_id=p.id, scan_id=scan.id, rule=rule, severity=severity, status=status, message=rule,
                structure_id=ids[structure] if structure else None, details={},
            )
        )  # fmt: skip

    for scan, status, agreement in [
        (s5, "adjudication", {"liver": {"dice": 0.95}, "pancreatic_lesion": {"dice": 0.1, "below_threshold": True}}),
        (s2, "fused", {"liver": {"dice": 0.85, "below_threshold": False}}),
        (s3, "open", {}),
    ]:
        db.add(ReaderSet(project_id=p.id, scan_id=scan.id, status=status, agreement=agreement))

    model = Model(project_id=p.id, name="unet", architecture="unet", structures=["liver", "pancreas"])
    db.add(model)
    db.flush()
    mv = [ModelVersion(model_id=model.id, number=n) for n in (1, 2, 3)]
    db.add_all(mv)
    db.flush()
    db.add(
        TrainingRound(
            model_id=model.id, new_model_version_id=mv[1].id, previous_model_version_id=mv[0].id,
            train_versions=10, heldout_versions=2, ai_vs_final_dice={"liver": 0.8, "pancreas": 0.6},
            heldout_new={"mean_dice": 0.75}, heldout_previous={"per_structure": {"liver": 0.7, "pancreas": 0.5}},
            promoted=True, created_at=b.at(48),
        )
    )  # fmt: skip
    db.add(
        TrainingRound(
            model_id=model.id, new_model_version_id=mv[2].id, previous_model_version_id=mv[1].id,
            train_versions=20, heldout_versions=2, ai_vs_final_dice={"liver": 0.9}, created_at=b.at(1),
        )
    )  # fmt: skip
    db.flush()
    return b


def _get(client: TestClient, world: World, name: str, role: str = "lead", **params: Any) -> Any:
    response = client.get(
        f"/api/projects/{world.project.id}/dashboard/{name}", headers=world.headers[role], params=params
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.sqlite
@both_databases
def test_summary_sites_and_phases(client: TestClient, world: World, built: Built) -> None:
    summary = _get(client, world, "summary")
    assert summary["total_scans"] == 6
    assert summary["by_state"] == {
        "new": 1, "pre_annotated": 0, "annotating": 1, "submitted": 1, "in_review": 1, "changes_requested": 0,
        "approved": 1, "adjudication": 1,
    }  # fmt: skip
    assert summary["in_review_by_level"] == [{"level": 1, "name": "review", "scans": 1}]
    assert summary["approved_fraction"] == pytest.approx(1 / 6)
    assert summary["live_leases"] == 1  # S6's lease expired an hour ago
    assert summary["assigned"] == 3
    assert summary["unassigned_open"] == 3  # S4 (no task), S5, S6
    assert summary["open_findings"] == 2
    assert summary["scans_with_open_findings"] == 2
    assert summary["active_seconds"] == pytest.approx(6400.0)

    sites = {g["key"]: g for g in _get(client, world, "sites")["groups"]}
    assert set(sites) == {"site_a", "site_b", None}
    assert sites["site_a"]["total"] == 3
    assert (sites["site_a"]["by_state"]["approved"], sites["site_a"]["by_state"]["submitted"]) == (1, 1)
    assert sites["site_a"]["approved_fraction"] == pytest.approx(1 / 3)
    assert sites["site_b"]["by_state"]["new"] == 1 and sites["site_b"]["by_state"]["annotating"] == 1
    assert sites[None]["by_state"]["adjudication"] == 1
    phases = _get(client, world, "phases")
    assert phases["group_by"] == "phase"
    assert [(g["key"], g["total"]) for g in phases["groups"]] == [("venous", 4), ("arterial", 1), (None, 1)]


@pytest.mark.sqlite
@both_databases
def test_structures_use_head_or_approved_versions_and_refresh(
    client: TestClient, world: World, built: Built, db: Session
) -> None:
    first = _get(client, world, "structures")
    by_name = {s["name"]: s for s in first["structures"]}
    assert len(first["structures"]) == 28
    assert first["cached"] is False
    liver = by_name["liver"]
    assert (liver["scans_present"], liver["scans_with_version"]) == (2, 2)
    assert liver["mean_volume_ml"] == pytest.approx(20.0)
    assert liver["median_volume_ml"] == pytest.approx(20.0)
    assert liver["open_findings"] == 1
    assert by_name["pancreas"]["scans_present"] == 1  # missing in S2's head
    assert by_name["pancreas"]["median_volume_ml"] == pytest.approx(20.0)
    assert by_name["spleen"]["scans_present"] == 0  # present but empty
    assert by_name["spleen"]["mean_volume_ml"] is None
    assert by_name["kidney_left"]["scans_present"] == 0

    assert _get(client, world, "structures")["cached"] is True
    _version(db, built.scans["s2"], {"liver": 60.0})  # a new head invalidates the cache at once
    after_out = _get(client, world, "structures")
    assert after_out["cached"] is True
    after = {s["name"]: s for s in after_out["structures"]}
    assert after["liver"]["mean_volume_ml"] == pytest.approx(35.0)

    assert after["pancreas"]["scans_present"] == 1  # the new head has no pancreas row: S2 still has none
    s7 = _scan(db, world.project, "S7", "site_c", "venous")  # a scan added after the table was built
    _version(db, s7, {"liver": 50.0, "pancreas": 40.0})
    grown_out = _get(client, world, "structures")
    assert grown_out["cached"] is True  # updated in place, not rebuilt
    grown = {s["name"]: s for s in grown_out["structures"]}
    assert (grown["liver"]["scans_present"], grown["liver"]["scans_with_version"]) == (3, 3)
    assert grown["liver"]["mean_volume_ml"] == pytest.approx(40.0)  # 10, 60, 50
    assert grown["pancreas"]["median_volume_ml"] == pytest.approx(30.0)  # 20, 40
    assert grown["spleen"]["scans_present"] == 0

    approved = {s["name"]: s for s in _get(client, world, "structures", basis="approved")["structures"]}
    assert approved["liver"]["scans_with_version"] == 1
    assert approved["liver"]["mean_volume_ml"] == pytest.approx(999.0)
    assert approved["pancreas"]["scans_present"] == 0
    # An approval (a transition) moves S2's approved version: the approved basis follows it.
    task = db.get(ScanTask, built.scans["s2"].id)
    assert task is not None
    task.state, task.approved_version_id = "approved", built.scans["s2"].head_version_id
    db.add(
        TaskTransition(
            project_id=world.project.id, scan_id=task.scan_id, action="approve", from_state="in_review",
            to_state="approved", actor_user_id=world.users["reviewer"].id,
        )
    )  # fmt: skip
    db.flush()
    approved = {s["name"]: s for s in _get(client, world, "structures", basis="approved")["structures"]}
    assert approved["liver"]["scans_with_version"] == 2
    assert approved["liver"]["mean_volume_ml"] == pytest.approx((999.0 + 60.0) / 2)
    fresh = {s["name"]: s for s in _get(client, world, "structures", basis="approved", fresh="true")["structures"]}
    assert fresh == approved


@pytest.mark.sqlite
@both_databases
def test_throughput_per_person_per_day(client: TestClient, world: World, built: Built) -> None:
    out = _get(client, world, "throughput", days=30)
    people = {p["user_id"]: p for p in out["people"]}
    ann = people[world.users["annotator"].id]
    rev = people[world.users["reviewer"].id]
    assert ann["role"] == "annotator" and rev["role"] == "reviewer"
    today = built.now.date()
    days = {d["day"]: d for d in ann["days"]}
    two_days_ago = days[(today - timedelta(days=2)).isoformat()]
    assert (two_days_ago["versions_saved"], two_days_ago["active_seconds"]) == (3, pytest.approx(900.0))
    assert days[(today - timedelta(days=1)).isoformat()]["active_seconds"] == pytest.approx(100.0)
    assert (today - timedelta(days=40)).isoformat() not in days  # outside the window
    submits_per_day: dict[str, int] = {}
    for at in built.submits:
        key = at.astimezone(UTC).date().isoformat()
        submits_per_day[key] = submits_per_day.get(key, 0) + 1
    assert {d: v["submissions"] for d, v in days.items() if v["submissions"]} == submits_per_day
    assert ann["totals"]["submissions"] == 7
    assert ann["totals"]["versions_saved"] == 4
    assert ann["totals"]["active_seconds"] == pytest.approx(1000.0)
    assert rev["totals"]["reviews"] == 4
    assert rev["totals"]["approvals"] == 3
    assert rev["totals"]["changes_requested"] == 1
    assert out["since"] == (today - timedelta(days=29)).isoformat()


@pytest.mark.sqlite
@both_databases
def test_editing_time_overall_and_per_person(client: TestClient, world: World, built: Built) -> None:
    out = _get(client, world, "editing-time")
    assert out["overall"]["count"] == 4
    assert out["overall"]["median_s"] == pytest.approx(650.0)  # 100, 400, 900, 5000
    assert out["overall"]["p90_s"] == pytest.approx(900 + 0.7 * 4100)
    assert out["approved"] == {"count": 1, "mean_s": 900.0, "median_s": 900.0, "p90_s": 900.0}
    (person,) = out["people"]
    assert person["user_id"] == world.users["annotator"].id
    assert person["scans"] == 3
    assert person["per_scan"]["median_s"] == pytest.approx(600.0)  # S1 600, S3 400, S6 5000
    assert person["total_active_seconds"] == pytest.approx(6000.0)
    recent = _get(client, world, "editing-time", days=30)["people"][0]
    assert (recent["scans"], recent["total_active_seconds"]) == (2, pytest.approx(1000.0))


@pytest.mark.sqlite
@both_databases
def test_turnaround_medians(client: TestClient, world: World, built: Built) -> None:
    out = _get(client, world, "turnaround", weeks=12)
    first = out["first_review"]  # 10 h, 4 h (S1); 10 h, 2 h (S6)
    assert first["count"] == 4
    assert first["median_s"] == pytest.approx(7 * HOUR)
    assert first["mean_s"] == pytest.approx(6.5 * HOUR)
    assert first["p90_s"] == pytest.approx(10 * HOUR)
    approval = out["approval"]  # S1 24 h (cycle starts at the first submission); S6 10 h and 2 h
    assert approval["count"] == 3
    assert approval["median_s"] == pytest.approx(10 * HOUR)
    assert approval["mean_s"] == pytest.approx(12 * HOUR)
    assert sum(w["first_review"]["count"] for w in out["weeks"]) == 4
    assert sum(w["approval"]["count"] for w in out["weeks"]) == 3
    assert all(date.fromisoformat(w["week"]).weekday() == 0 for w in out["weeks"])


def test_turnaround_is_recomputed_exactly_when_a_decision_arrives(
    client: TestClient, world: World, built: Built, db: Session
) -> None:
    from sqlalchemy import event

    statements: list[str] = []
    parameters: list[Any] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        statements.append(statement)
        parameters.append(params)

    engine = db.get_bind().engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        first = _get(client, world, "turnaround", weeks=12)
        again = _get(client, world, "turnaround", weeks=12)
        assert again == first
        assert sum("WITH decisions" in q for q in statements) == 1  # the second answer came from the cache
        s6 = built.scans["s6"]
        db.add(
            TaskTransition(
                project_id=world.project.id, scan_id=s6.id, action="request_changes", from_state="in_review",
                to_state="changes_requested", actor_user_id=world.users["reviewer"].id, at=built.now,
            )
        )  # fmt: skip
        db.flush()
        after = _get(client, world, "turnaround", weeks=12)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    pair_queries = [params for q, params in zip(statements, parameters, strict=True) if "WITH decisions" in q]
    assert len(pair_queries) == 2
    assert pair_queries[0]["after_id"] == 0 and pair_queries[1]["after_id"] > 0  # only the new decision was asked
    # S6's last event before this decision was its submission 2 h ago: one more first review.
    assert after["first_review"]["count"] == first["first_review"]["count"] + 1
    service.clear_structure_cache()
    assert _get(client, world, "turnaround", weeks=12) == after  # the same as from scratch


@pytest.mark.sqlite
@both_databases
def test_agreement_histogram_and_adjudication(client: TestClient, world: World, built: Built) -> None:
    out = _get(client, world, "agreement", bins=10)
    assert out["reader_sets"] == 2
    assert out["sets_by_status"] == {"open": 1, "complete": 0, "adjudication": 1, "fused": 1}
    assert out["in_adjudication"] == 1
    counts = [b["count"] for b in out["histogram"]]
    assert counts == [0, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert out["histogram"][8]["lo"] == pytest.approx(0.8)
    structures = {s["name"]: s for s in out["structures"]}
    assert structures["liver"]["sets"] == 2
    assert structures["liver"]["mean_dice"] == pytest.approx(0.9)
    assert structures["pancreatic_lesion"]["below_threshold"] == 1
    assert structures["liver"]["below_threshold"] == 0
    assert len(_get(client, world, "agreement", bins=4)["histogram"]) == 4


@pytest.mark.sqlite
@both_databases
def test_model_rounds_dice(client: TestClient, world: World, built: Built) -> None:
    (model,) = _get(client, world, "model-rounds")["models"]
    assert model["name"] == "unet"
    first, second = model["rounds"]
    assert first["ai_vs_final_dice"] == {"liver": 0.8, "pancreas": 0.6}
    assert first["ai_vs_final_mean"] == pytest.approx(0.7)
    assert first["heldout_new_mean"] == pytest.approx(0.75)
    assert first["heldout_previous_mean"] == pytest.approx(0.6)
    assert first["promoted"] is True
    assert second["ai_vs_final_mean"] == pytest.approx(0.9)
    assert second["heldout_new_mean"] is None


@pytest.mark.sqlite
@both_databases
def test_qa_counts(client: TestClient, world: World, built: Built) -> None:
    out = _get(client, world, "qa")
    assert out["open_findings"] == 2
    assert out["scans_with_open_findings"] == 2
    assert {c["key"]: c["count"] for c in out["by_rule"]} == {"small_lesion": 1, "structure_missing": 1}
    assert {c["key"]: c["count"] for c in out["by_structure"]} == {"liver": 1, None: 1}
    assert {c["key"]: c["count"] for c in out["by_severity"]} == {"warning": 1, "error": 1}
    assert out["by_status"] == {"open": 2, "resolved": 1, "dismissed": 0}


@pytest.mark.sqlite
@both_databases
def test_empty_project_answers_zeros_and_nulls(client: TestClient, world: World) -> None:
    summary = _get(client, world, "summary")
    assert summary["total_scans"] == 0 and summary["approved_fraction"] == 0.0
    assert _get(client, world, "turnaround")["first_review"] == {
        "count": 0, "mean_s": None, "median_s": None, "p90_s": None
    }  # fmt: skip
    assert _get(client, world, "structures")["structures"][0]["median_volume_ml"] is None
    assert _get(client, world, "throughput")["people"] == []


@pytest.mark.parametrize("name", ENDPOINTS)
def test_permissions(client: TestClient, world: World, name: str) -> None:
    url = f"/api/projects/{world.project.id}/dashboard/{name}"
    for role in ("lead", "reviewer", "platform_admin"):
        assert client.get(url, headers=world.headers[role]).status_code == 200, role
    for role in ("annotator", "viewer"):
        assert client.get(url, headers=world.headers[role]).status_code == 403, role
    assert client.get(url, headers=world.headers["outsider"]).status_code == 404
    assert client.get(url).status_code == 401


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("throughput", {"days": 0}),
        ("throughput", {"days": "many"}),
        ("editing-time", {"days": 100000}),
        ("turnaround", {"weeks": 0}),
        ("agreement", {"bins": 1}),
        ("structures", {"basis": "latest"}),
    ],
)
def test_bad_parameters_are_422(client: TestClient, world: World, name: str, params: dict[str, Any]) -> None:
    response = client.get(
        f"/api/projects/{world.project.id}/dashboard/{name}", headers=world.headers["lead"], params=params
    )
    assert response.status_code == 422, response.text


def test_bench_seed_smoke() -> None:
    """The scale benchmark's seed at a tiny scale: every table filled and the dashboard agrees with it."""
    from bench.review_scale import rows_of, seed

    name = f"maskloop_review_seed_{os.getpid()}"
    url = create_pg_database(name)
    engine = make_engine(url)
    try:
        migrate.upgrade(url)
        seeded = seed(url, 60)
        assert seeded.counts["scans"] == 60
        assert seeded.counts["label_versions"] == 180
        assert seeded.counts["label_version_structures"] == 180 * 28
        assert seeded.counts["scan_tasks"] == 60
        assert seeded.counts["audit_events"] >= 600  # ten per scan, plus the set-up's own events
        assert seeded.counts["task_transitions"] > 60
        with Session(engine) as db:
            project = db.get(Project, seeded.project_id)
            assert project is not None
            summary = service.summary(db, project)
            assert summary.total_scans == 60
            assert sum(summary.by_state.model_dump().values()) == 60
            structures = service.structures(db, project)
            assert {s.scans_with_version for s in structures.structures} == {60}
            assert max(s.scans_present for s in structures.structures) > 50
            assert sum(p.totals.versions_saved for p in service.throughput(db, project, days=366).people) > 0
        rows = {r.key: r for r in rows_of({"dashboard_summary": [5.0, 7.0]}, seeded)}
        assert rows["dashboard_p95_ms"].value == pytest.approx(6.9)
        assert rows["worklist_p95_ms"].value != rows["worklist_p95_ms"].value  # NaN while not measured
    finally:
        engine.dispose()
        drop_pg_database(name)
