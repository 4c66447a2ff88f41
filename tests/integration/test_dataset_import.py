"""Dataset import as jobs: a faulty dataset imports every other case and names the failing ones (file, reason);
a re-run resumes; the API imports only under the import root; a worker SIGKILLed mid-case leaves nothing
half-written and its case is imported by another; two workers import disjoint cases with no duplicate scan; the
0013 migration goes up and down on both databases; the fast mask packing stores what the plain one stores.
"""

from __future__ import annotations

import csv
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, inspect, select

from backend.core import migrate
from backend.core.blobstore import sha256_hex
from backend.core.config import Settings
from backend.core.db import make_engine
from backend.core.errors import InvalidInput
from backend.flows import imports as import_flows
from backend.imaging import chunks, pants
from backend.imaging.phantom import write_pants_dataset
from backend.imports import service as imports
from backend.models import ImportCase, Job, Scan
from tests.conftest import World, create_pg_database, drop_pg_database
from tests.integration.worker_stack import Stack, build_stack

SHAPE, SPACING = (32, 32, 16), (6.0, 6.0, 8.0)
IDS = [f"PanTS_{i:08d}" for i in range(1, 7)]


def _dataset(root: Path, cases: int = 6) -> Path:
    write_pants_dataset(root, cases, shape=SHAPE, spacing=SPACING, seed=5)
    return root


def _break(root: Path) -> None:
    """Case 2: truncated CT; case 3: a mask of the wrong shape; case 4: no CT; case 5: no spleen file (a missing
    structure, not a failure); a metadata row for a case that has no folder."""
    ct2 = root / "ImageTr" / IDS[1] / "ct.nii.gz"
    data = ct2.read_bytes()
    ct2.write_bytes(data[: len(data) // 2])
    liver3 = root / "LabelTr" / IDS[2] / "segmentations" / "liver.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.uint8), np.diag([6.0, 6.0, 8.0, 1.0])), str(liver3))
    (root / "ImageTr" / IDS[3] / "ct.nii.gz").rename(root / "ct4.nii.gz.bak")
    (root / "LabelTr" / IDS[4] / "segmentations" / "spleen.nii.gz").unlink()
    with (root / "metadata.csv").open("a", newline="") as sheet:
        csv.writer(sheet).writerow(["PanTS_00000099"] + [""] * 14)


def _report(client: TestClient, headers: dict[str, str], project_id: int, run_id: int) -> dict[str, Any]:
    response = client.get(f"/api/projects/{project_id}/imports/{run_id}", headers=headers, params={"limit": 100})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _by_case(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {case["case_id"]: case for case in report["cases"]}


# --- a faulty dataset, imported here (the command line without workers), on SQLite and PostgreSQL -------------


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    with build_stack(tmp_path, embedded=request.param == "sqlite") as built:
        yield built


def test_a_faulty_dataset_imports_every_other_case_and_a_rerun_resumes(stack: Stack, tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    _break(root)
    with stack.factory() as db:
        project = db.merge(stack.project)
        launched = import_flows.launch_import(db, project, root, actor=None, here=True)
        run_id = launched.run.id
    assert launched.created and launched.cases == 5 and len(launched.jobs) == 5  # case 4 has no CT: no job
    done: list[import_flows.CaseDone] = []
    import_flows.import_here(stack.blobs, run_id, threads=2, on_case=done.append)
    assert [d.line.row.case_id for d in done if d.line] == [IDS[0], IDS[1], IDS[2], IDS[4], IDS[5]]

    report = _report(stack.client, stack.headers["lead"], stack.project.id, run_id)
    assert report["run"]["status"] == "finished"
    counts = report["run"]["counts"]
    assert (counts["imported"], counts["failed"], counts["pending"], counts["total"]) == (3, 4, 0, 7), counts
    cases = _by_case(report)
    assert {c for c, case in cases.items() if case["status"] == "imported"} == {IDS[0], IDS[4], IDS[5]}
    truncated, wrong_shape, no_ct, orphan = cases[IDS[1]], cases[IDS[2]], cases[IDS[3]], cases["PanTS_00000099"]
    assert truncated["file"] == f"ImageTr/{IDS[1]}/ct.nii.gz" and "truncated" in truncated["reason"]
    assert wrong_shape["file"] == f"LabelTr/{IDS[2]}/segmentations/liver.nii.gz"
    assert "does not match the scan shape" in wrong_shape["reason"]
    assert no_ct["file"] == f"ImageTr/{IDS[3]}/ct.nii.gz" and "has no ct.nii.gz" in no_ct["reason"]
    assert orphan["file"] == "metadata.csv" and "no case folder" in orphan["reason"]
    assert "spleen" in cases[IDS[4]]["missing_structures"] and "spleen" not in cases[IDS[0]]["missing_structures"]
    assert cases[IDS[0]]["timings"]["total"] > 0 and cases[IDS[0]]["attempts"] == 1
    failed = stack.client.get(
        f"/api/projects/{stack.project.id}/imports/{run_id}", headers=stack.headers["lead"], params={"status": "failed"}
    ).json()
    assert [c["case_id"] for c in failed["cases"]] == [IDS[1], IDS[2], IDS[3], "PanTS_00000099"]
    # Never half-written: the failing cases have no scan, no version, nothing.
    with stack.factory() as db:
        scans = {case_id: head for case_id, head in db.execute(select(Scan.case_id, Scan.head_version_id))}
        jobs = {job.params["case_id"]: job for job in db.scalars(select(Job).where(Job.kind == "import"))}
    assert set(scans) == {IDS[0], IDS[4], IDS[5]} and all(scans.values())
    assert jobs[IDS[1]].status == "failed" and "truncated" in (jobs[IDS[1]].error or "")

    # Fix the CT of case 2 and put case 4's back; run again: done cases stay, failed ones are retried.
    write_pants_dataset(tmp_path / "fresh", 2, shape=SHAPE, spacing=SPACING, seed=5)
    (root / "ImageTr" / IDS[1] / "ct.nii.gz").write_bytes(
        (tmp_path / "fresh/ImageTr" / IDS[1] / "ct.nii.gz").read_bytes()
    )
    (root / "ct4.nii.gz.bak").rename(root / "ImageTr" / IDS[3] / "ct.nii.gz")
    with stack.factory() as db:
        again = import_flows.launch_import(db, db.merge(stack.project), root, actor=None, here=True)
    assert not again.created and again.run.id == run_id and len(again.jobs) == 3  # cases 2, 3 and 4
    import_flows.import_here(stack.blobs, run_id, threads=1)
    report = _report(stack.client, stack.headers["lead"], stack.project.id, run_id)
    cases = _by_case(report)
    assert {c for c, case in cases.items() if case["status"] == "imported"} == {IDS[0], IDS[1], IDS[3], IDS[4], IDS[5]}
    assert {c for c, case in cases.items() if case["status"] == "failed"} == {IDS[2], "PanTS_00000099"}
    assert cases[IDS[1]]["attempts"] == 2 and cases[IDS[0]]["attempts"] == 1
    assert report["run"]["launches"] == 2
    with stack.factory() as db:
        assert db.scalar(select(func.count(Scan.id))) == 5
        run = imports.get_run(db, run_id)
        counts_now = imports.launch_counts(db, run)
    assert (counts_now.imported, counts_now.skipped, counts_now.failed) == (2, 3, 2)


# --- the API: only folders under the import root, leads and admins ---------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The app's settings with an import root (overrides the shared fixture)."""
    (tmp_path / "datasets").mkdir()
    return Settings(
        data_dir=tmp_path / "data",
        secret_key="test-secret-0123456789abcdef0123456789abcdef",
        import_root=tmp_path / "datasets",
    )


def test_the_api_imports_only_under_the_import_root(
    client: TestClient, world: World, settings: Settings, tmp_path: Path
) -> None:
    assert settings.import_root is not None
    _dataset(settings.import_root / "pants", cases=2)
    _dataset(tmp_path / "outside", cases=1)
    (settings.import_root / "link").symlink_to(tmp_path / "outside")
    url = f"/api/projects/{world.project.id}/imports"
    lead = world.headers["lead"]
    for path in ("../outside", str(tmp_path / "outside"), "link", "pants/../../outside", "/etc"):
        refused = client.post(url, headers=lead, json={"path": path})
        assert refused.status_code == 403, (path, refused.text)
        assert "outside the import root" in refused.json()["detail"]
    assert client.post(url, headers=lead, json={"path": "nope"}).status_code == 422
    (settings.import_root / "empty").mkdir()
    not_pants = client.post(url, headers=lead, json={"path": "empty"})
    assert not_pants.status_code == 422 and "not a PanTS-layout folder" in not_pants.json()["detail"]
    assert client.post(url, headers=world.headers["annotator"], json={"path": "pants"}).status_code == 403
    assert client.post(url, headers=world.headers["outsider"], json={"path": "pants"}).status_code == 404

    started = client.post(url, headers=lead, json={"path": "pants"})
    assert started.status_code == 201, started.text
    body = started.json()
    assert body["resumed"] is False and body["queued"] == 2 and body["found"] == 2
    assert body["status"] == "running" and body["counts"]["pending"] == 2
    assert body["root"] == str((settings.import_root / "pants").resolve())
    again = client.post(
        url, headers=world.headers["platform_admin"], json={"path": str(settings.import_root / "pants")}
    )
    assert again.status_code == 200 and again.json()["resumed"] is True
    assert again.json()["queued"] == 0 and again.json()["in_progress"] == 2 and again.json()["id"] == body["id"]
    report = client.get(f"{url}/{body['id']}", headers=lead).json()
    assert [c["status"] for c in report["cases"]] == ["pending", "pending"] and report["total"] == 2
    assert client.get(f"{url}/{body['id']}", headers=world.headers["viewer"]).status_code == 403
    assert client.get(f"/api/projects/{world.project.id + 1000}/imports/{body['id']}", headers=lead).status_code == 404
    listed = client.get(url, headers=lead).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == body["id"]
    schema = client.get("/openapi.json").json()
    assert "/api/projects/{project_id}/imports/{run_id}" in schema["paths"]


def test_without_an_import_root_the_api_imports_nothing(client: TestClient, world: World, settings: Settings) -> None:
    settings.import_root = None
    refused = client.post(
        f"/api/projects/{world.project.id}/imports", headers=world.headers["lead"], json={"path": "x"}
    )
    assert refused.status_code == 403 and "MASKLOOP_IMPORT_ROOT" in refused.json()["detail"]


# --- real workers: a SIGKILL mid-case, two workers in parallel -------------------------------------------------


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    tmp = tmp_path_factory.mktemp("import-workers")
    datasets = tmp / "datasets"
    datasets.mkdir()
    saved = os.environ.get("MASKLOOP_IMPORT_ROOT")
    os.environ["MASKLOOP_IMPORT_ROOT"] = str(datasets)
    try:
        with build_stack(tmp) as built:
            yield built, datasets
    finally:
        if saved is None:
            os.environ.pop("MASKLOOP_IMPORT_ROOT", None)
        else:
            os.environ["MASKLOOP_IMPORT_ROOT"] = saved


def _start(stack: Stack, name: str, env: dict[str, str]) -> Any:
    process = stack.start_worker(name, extra_env={"MASKLOOP_IMPORT_MASK_THREADS": "1", **env})
    deadline = time.monotonic() + 90
    while " ready." not in (stack.log_dir / f"worker-{name}.log").read_text(errors="replace"):
        assert time.monotonic() < deadline, f"worker {name} did not start"
        time.sleep(0.2)
    return process


def _launch(stack: Stack, folder: str) -> int:
    response = stack.client.post(
        f"/api/projects/{stack.project.id}/imports", headers=stack.headers["lead"], json={"path": folder}
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _wait(stack: Stack, run_id: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = _report(stack.client, stack.headers["lead"], stack.project.id, run_id)
        if report["run"]["status"] == "finished":
            return report
        time.sleep(0.3)
    logs = "\n".join(p.read_text()[-3000:] for p in stack.log_dir.glob("worker-*.log"))
    raise AssertionError(f"run {run_id} did not finish: {report['run']}\n{logs}")


@pytest.mark.slow
def test_a_worker_killed_mid_case_leaves_nothing_half_written_and_the_case_is_imported_again(
    workers: tuple[Stack, Path],
) -> None:
    stack, datasets = workers
    _dataset(datasets / "killed", cases=1)
    victim = _start(stack, "victim", {"MASKLOOP_TEST_IMPORT_HOLD_BEFORE_ROWS_S": "120"})
    run_id = _launch(stack, "killed")
    deadline = time.monotonic() + 60
    while "waiting before rows" not in _case_state(stack, run_id):
        assert time.monotonic() < deadline, _case_state(stack, run_id)
        time.sleep(0.2)
    with stack.factory() as db:
        assert db.scalar(select(func.count(Scan.id)).where(Scan.case_id == IDS[0])) == 0  # decoded, no rows yet
    stack.kill_worker(victim, signal.SIGKILL)
    _start(stack, "survivor", {})
    report = _wait(stack, run_id, timeout=90)
    (case,) = report["cases"]
    assert case["status"] == "imported" and case["attempts"] == 2, case
    with stack.factory() as db:
        assert db.scalar(select(func.count(Scan.id)).where(Scan.case_id == IDS[0])) == 1
        job = db.get(Job, case["job_id"])
        assert job is not None and job.status == "succeeded" and job.attempts == 2


def _case_state(stack: Stack, run_id: int) -> str:
    """'waiting before rows' once the victim holds its case decoded (its blobs stored, no row written)."""
    with stack.factory() as db:
        row = db.scalar(select(ImportCase).where(ImportCase.run_id == run_id))
        job = db.get(Job, row.job_id) if row is not None and row.job_id else None
    if row is None or job is None:
        return "no case yet"
    if row.status == "running" and job.status == "running" and job.message.startswith("decoded"):
        return "waiting before rows"
    return f"{row.status}/{job.status}: {job.message}"


@pytest.mark.slow
def test_two_workers_import_disjoint_cases_without_duplicate_scans(workers: tuple[Stack, Path]) -> None:
    stack, datasets = workers
    _dataset(datasets / "parallel", cases=6)
    hold = {"MASKLOOP_TEST_HOLD_AFTER_CLAIM_S": "1"}
    _start(stack, "a", hold)
    _start(stack, "b", hold)
    run_id = _launch(stack, "parallel")
    # A second launch while the first runs: nothing is queued twice.
    again = stack.client.post(
        f"/api/projects/{stack.project.id}/imports", headers=stack.headers["lead"], json={"path": "parallel"}
    )
    assert again.status_code == 200 and again.json()["queued"] == 0, again.text
    report = _wait(stack, run_id)
    counts = report["run"]["counts"]
    # (A case the other test imported into this project already is skipped, not imported twice.)
    assert counts["imported"] + counts["skipped"] == 6 and counts["failed"] == 0, counts
    workers_used = {case["worker"] for case in report["cases"] if case["status"] == "imported"}
    assert len(workers_used) >= 2, workers_used
    with stack.factory() as db:
        rows = db.execute(select(Scan.case_id, func.count()).group_by(Scan.case_id)).all()
    counted = {case_id: n for case_id, n in rows if case_id in IDS}
    assert counted == dict.fromkeys(IDS, 1)


# --- the migration, the folder survey, the mask packing --------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_migration_0013_up_and_down(database: str, tmp_path: Path) -> None:
    name = f"maskloop_imports_mig_{os.getpid()}"
    url = f"sqlite:///{tmp_path / 'm.db'}" if database == "sqlite" else create_pg_database(name)
    try:
        migrate.upgrade(url, "0012")
        engine = make_engine(url)
        assert "import_runs" not in inspect(engine).get_table_names()
        migrate.upgrade(url, "0013")
        tables = set(inspect(make_engine(url)).get_table_names())
        assert {"import_runs", "import_cases"} <= tables
        migrate.downgrade(url, "0012")
        assert not {"import_runs", "import_cases"} & set(inspect(make_engine(url)).get_table_names())
        migrate.upgrade(url)
        engine.dispose()
    finally:
        if database == "postgresql":
            drop_pg_database(name)


def test_the_folder_survey_collects_case_problems(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    _break(root)
    folder = pants.survey_pants_folder(root, ["liver", "spleen"], read_masks=False)
    assert [c.case_id for c in folder.cases] == [IDS[0], IDS[1], IDS[2], IDS[4], IDS[5]]
    assert [(p.case_id, p.file) for p in folder.problems] == [(IDS[3], f"ImageTr/{IDS[3]}/ct.nii.gz")]
    assert folder.orphan_rows == ["PanTS_00000099"] and folder.metadata_file == "metadata.csv"
    with pytest.raises(InvalidInput, match=r"has no ct\.nii\.gz"):
        pants.scan_pants_folder(root, ["liver"])


@pytest.mark.parametrize("shape", [(130, 70, 72), (64, 64, 44), (65, 129, 7), (3, 5, 200)])
def test_masks_decoded_in_nifti_order_are_stored_as_the_plain_packing_stores_them(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape) + shape[2])
    mask = rng.random(shape) < 0.3
    mask[:, :, : shape[2] // 3] = False
    fortran = np.asfortranarray(mask)
    stored_c: dict[str, bytes] = {}
    stored_f: dict[str, bytes] = {}

    def put(store: dict[str, bytes]) -> Any:
        def put_blob(data: bytes) -> str:
            store[sha256_hex(data)] = data
            return sha256_hex(data)

        return put_blob

    c_manifest = chunks.build_manifest(np.ascontiguousarray(mask), put(stored_c))
    f_manifest = chunks.build_manifest(fortran, put(stored_f))
    assert c_manifest.to_bytes() == f_manifest.to_bytes() and stored_c == stored_f
    assert np.array_equal(chunks.assemble_mask(f_manifest, stored_f.__getitem__), mask)
    block = fortran[: min(64, shape[0]), : min(64, shape[1]), : min(64, shape[2])]
    expected = chunks._CHUNK_TAG_PACKBITS_ZSTD + chunks._compressor().compress(
        np.packbits(np.ascontiguousarray(block).ravel()).tobytes()
    )
    assert chunks.encode_chunk(block) == expected
