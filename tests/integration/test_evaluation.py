"""Evaluation API: runs against approved ground truth, stored numbers, CSV, detection, leaderboard, bad input."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import ndimage
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.core.blobstore import LocalBlobStore
from backend.evaluation import metrics
from backend.evaluation import service as evaluation
from backend.imaging.nifti import to_nifti_gz
from backend.labels import service as labels
from backend.models import EvaluationCase, EvaluationRun, Job, Model, ModelVersion, Scan, ScanTask
from backend.registry import service as registry
from tests.conftest import World
from tests.factories import small_phantom, upload_masks, upload_scan

STRUCTURES = ["liver", "pancreas", "pancreatic_lesion"]
BOTH_DATABASES = pytest.mark.parametrize(
    "database", ["postgresql", pytest.param("sqlite", marks=pytest.mark.sqlite)], indirect=True
)


@dataclass
class Seeded:
    """Three approved test scans (two with a lesion), one approved train scan, two models with predictions."""

    scans: dict[str, int]
    gt: dict[str, int]
    good: int
    worse: int
    unused: int
    good_versions: dict[str, int]


def _model_version(db: Session, project_id: int, name: str) -> ModelVersion:
    model = Model(project_id=project_id, name=name, architecture="classical", structures=STRUCTURES)
    db.add(model)
    db.flush()
    version = ModelVersion(model_id=model.id, number=1, is_promoted=True)
    db.add(version)
    db.flush()
    return version


def _predict(
    db: Session,
    blobs: LocalBlobStore,
    scan_id: int,
    version: ModelVersion,
    masks: dict[str, np.ndarray],
    lesion_probability: np.ndarray | None = None,
) -> int:
    scan = db.get(Scan, scan_id)
    assert scan is not None
    label_version = labels.create_version(
        db,
        blobs,
        scan,
        author=labels.Author(user_id=None, model_version_id=version.id),
        kind="model",
        masks=masks,
        branch=True,
        message="prediction",
    )
    job = Job(
        project_id=scan.project_id,
        kind="preannotate",
        queue="gpu",
        status="succeeded",
        scan_id=scan.id,
        model_version_id=version.id,
        params={},
    )
    db.add(job)
    db.flush()
    maps: dict[str, Any] = {}
    if lesion_probability is not None:
        quantised = np.rint(lesion_probability * 255).astype(np.uint8)
        maps["pancreatic_lesion"] = {"probability": blobs.put_bytes(to_nifti_gz(quantised, np.asarray(scan.affine)))}
    registry.record_prediction(
        db, job_id=job.id, scan=scan, model_version=version, label_version=label_version, maps=maps
    )
    return label_version.id


def _approve(db: Session, scan_id: int, version_id: int, split: str) -> None:
    scan = db.get(Scan, scan_id)
    assert scan is not None
    scan.split = split
    task = db.get(ScanTask, scan_id)
    if task is None:
        task = ScanTask(scan_id=scan_id, project_id=scan.project_id)
        db.add(task)
    task.state = "approved"
    task.approved_version_id = version_id
    db.flush()


@pytest.fixture
def seeded(client: TestClient, db: Session, world: World, blobs: LocalBlobStore) -> Seeded:
    lead = world.headers["lead"]
    pid = world.project.id
    good = _model_version(db, pid, "good")
    worse = _model_version(db, pid, "worse")
    unused = _model_version(db, pid, "unused")
    scans, gt, good_versions = {}, {}, {}
    fp = np.zeros((64, 64, 32), dtype=bool)
    fp[8:11, 8:11, 4:6] = True
    for name, seed, lesion, split in (
        ("A", 1, True, "test"),
        ("B", 2, True, "test"),
        ("C", 3, False, "test"),
        ("T", 4, True, "train"),
    ):
        phantom = small_phantom(seed=seed, lesion=lesion)
        meta = {"site": "north" if name != "B" else "south", "phase": "venous", "manufacturer": "acme"}
        scan_id = int(upload_scan(client, lead, pid, phantom, f"case-{name}", metadata=None)["id"])
        scan = db.get(Scan, scan_id)
        assert scan is not None
        scan.site, scan.phase, scan.manufacturer = meta["site"], meta["phase"], meta["manufacturer"]
        truth = {s: phantom.masks[s] for s in STRUCTURES}
        gt_id = int(upload_masks(client, lead, scan_id, truth, phantom.affine)["id"])
        liver, pancreas, lesion_mask = (truth[s] for s in STRUCTURES)
        if name == "A":
            predicted_lesion, probability = lesion_mask, np.where(lesion_mask, 0.9, 0.0)
        elif name == "B":
            predicted_lesion, probability = np.zeros_like(lesion_mask), np.zeros(lesion_mask.shape)
        else:
            predicted_lesion, probability = fp, np.where(fp, 0.7, 0.0)
        good_versions[name] = _predict(
            db,
            blobs,
            scan_id,
            good,
            {
                "liver": ndimage.binary_dilation(liver),
                "pancreas": pancreas,
                "pancreatic_lesion": predicted_lesion,
            },
            probability,
        )
        _predict(
            db,
            blobs,
            scan_id,
            worse,
            {
                "liver": ndimage.binary_erosion(liver, iterations=2),
                "pancreas": ndimage.binary_erosion(pancreas),
                "pancreatic_lesion": predicted_lesion,
            },
        )
        _approve(db, scan_id, gt_id, split)
        scans[name], gt[name] = scan_id, gt_id
    return Seeded(scans, gt, good.id, worse.id, unused.id, good_versions)


def _create(client: TestClient, world: World, role: str = "lead", **body: Any) -> Any:
    return client.post(f"/api/projects/{world.project.id}/evaluations", headers=world.headers[role], json=body)


def _execute(db: Session, blobs: LocalBlobStore, run_id: int) -> EvaluationRun:
    run = evaluation.get_run(db, run_id)
    return evaluation.execute_run(db, blobs, run)


@BOTH_DATABASES
def test_stored_numbers_equal_metrics_computed_directly(
    client: TestClient, db: Session, world: World, blobs: LocalBlobStore, seeded: Seeded
) -> None:
    response = _create(client, world, model_version_id=seeded.good, nsd_tolerance_mm={"default": 1.0, "liver": 3.0})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "queued" and created["cases_planned"] == 3  # the train scan is not in 'test'
    assert created["metric_definition"] == "deepmind" and "surface-distance" in created["nsd_definition"]
    job = db.get(Job, created["job_id"])
    assert job is not None and job.kind == "evaluate" and job.queue == "cpu"
    _execute(db, blobs, created["id"])
    report = client.get(f"/api/evaluations/{created['id']}", headers=world.headers["viewer"]).json()
    assert report["status"] == "succeeded"
    cases = client.get(f"/api/evaluations/{created['id']}/cases", headers=world.headers["viewer"]).json()
    assert len(cases["cases"]) == 9
    by_key = {(c["case_id"], c["structure"]): c for c in cases["cases"]}
    for name in ("A", "B", "C"):
        scan = db.get(Scan, seeded.scans[name])
        assert scan is not None
        gt_version = labels.get_version(db, seeded.gt[name])
        pred_version = labels.get_version(db, seeded.good_versions[name])
        for structure in STRUCTURES:
            gt_mask = labels.read_mask(blobs, scan, labels.structure_entry(db, gt_version, structure)[1])
            pred_mask = labels.read_mask(blobs, scan, labels.structure_entry(db, pred_version, structure)[1])
            tolerance = 3.0 if structure == "liver" else 1.0
            expected = metrics.evaluate_pair(gt_mask, pred_mask, scan.spacing, nsd_tolerance_mm=tolerance)
            stored = by_key[(f"case-{name}", structure)]
            assert stored["dsc"] == pytest.approx(expected.dsc, abs=1e-12)
            assert stored["nsd"] == (None if expected.nsd is None else pytest.approx(expected.nsd, abs=1e-12))
            assert stored["hd95"] == (None if expected.hd95 is None else pytest.approx(expected.hd95, abs=1e-12))
            assert stored["volume_error_ml"] == pytest.approx(expected.volume_error_ml)
            assert stored["nsd_tolerance_mm"] == tolerance
    liver = report["summary"]["structures"]["liver"]
    values = [by_key[(f"case-{n}", "liver")]["dsc"] for n in ("A", "B", "C")]
    assert liver["dsc"]["mean"] == pytest.approx(np.mean(values)) and liver["dsc"]["median"] == pytest.approx(
        np.median(values)
    )
    assert 0.5 < liver["dsc"]["mean"] < 1.0
    # Empty masks: B's prediction missed the lesion, C has no lesion: NSD/HD95 undefined, never 0.
    assert by_key[("case-B", "pancreatic_lesion")]["dsc"] == 0.0
    assert by_key[("case-B", "pancreatic_lesion")]["nsd"] is None
    assert by_key[("case-C", "pancreatic_lesion")]["surface_status"] == "gt_empty"
    lesion_block = report["summary"]["structures"]["pancreatic_lesion"]
    assert lesion_block["nsd"]["undefined"] == 2 and lesion_block["nsd"]["n"] == 1
    summary = report["summary"]
    assert summary["metric_definition"] == "deepmind"
    assert summary["nsd_definition"] == metrics.METRIC_DEFINITIONS["deepmind"]
    assert set(summary["by_site"]) == {"north", "south"}
    assert summary["by_site"]["south"]["liver"]["pairs"] == 1
    assert set(summary["by_phase"]) == {"venous"} and set(summary["by_manufacturer"]) == {"acme"}
    assert "no lesion" in summary["by_lesion_size"]
    assert sum(block["liver"]["pairs"] for block in summary["by_lesion_size"].values()) == 3
    # Detection: A found, B missed, C a false positive; confidence from the probability maps.
    found = summary["detection"]
    assert found["tumour_patients"] == 2 and found["tumour_free_patients"] == 1
    assert found["patient_sensitivity"] == 0.5 and found["specificity"] == 0.0
    assert found["auc"] == pytest.approx(0.5)  # A (0.9) beats C (0.7), B (0.0) does not
    assert found["confidence_source"] == "probability"
    assert found["false_positive_components"] == 1
    assert [d["detected"] for d in cases["detection"]] == [True, False, True]


def test_rerun_replaces_results_and_csv_download(
    client: TestClient, db: Session, world: World, blobs: LocalBlobStore, seeded: Seeded
) -> None:
    created = _create(client, world, model_version_id=seeded.good, structures=["liver", "pancreatic_lesion"]).json()
    _execute(db, blobs, created["id"])
    _execute(db, blobs, created["id"])
    count = db.scalar(select(func.count(EvaluationCase.id)).where(EvaluationCase.run_id == created["id"]))
    assert count == 6
    response = client.get(f"/api/evaluations/{created['id']}/cases?format=csv", headers=world.headers["viewer"])
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 6 and set(rows[0]) >= {"case_id", "structure", "dsc", "nsd", "hd95", "volume_error_ml"}
    lesion_b = next(r for r in rows if r["case_id"] == "case-B" and r["structure"] == "pancreatic_lesion")
    assert lesion_b["nsd"] == "undefined" and lesion_b["hd95"] == "undefined" and float(lesion_b["dsc"]) == 0.0
    json_rows = client.get(f"/api/evaluations/{created['id']}/cases", headers=world.headers["viewer"]).json()
    liver_a = next(r for r in json_rows["cases"] if r["case_id"] == "case-A" and r["structure"] == "liver")
    csv_liver_a = next(r for r in rows if r["case_id"] == "case-A" and r["structure"] == "liver")
    assert float(csv_liver_a["dsc"]) == pytest.approx(liver_a["dsc"])
    bad = client.get(f"/api/evaluations/{created['id']}/cases?format=xml", headers=world.headers["viewer"])
    assert bad.status_code == 422


def test_leaderboard_ranks_model_versions_by_mean_dice(
    client: TestClient, db: Session, world: World, blobs: LocalBlobStore, seeded: Seeded
) -> None:
    for version_id in (seeded.worse, seeded.good):
        created = _create(client, world, model_version_id=version_id).json()
        _execute(db, blobs, created["id"])
    board = client.get(
        f"/api/projects/{world.project.id}/leaderboard?structure=liver", headers=world.headers["viewer"]
    ).json()
    assert [row["model"] for row in board["rows"]] == ["good", "worse"]
    assert [row["rank"] for row in board["rows"]] == [1, 2]
    assert board["rows"][0]["dsc_mean"] > board["rows"][1]["dsc_mean"]
    other_split = client.get(
        f"/api/projects/{world.project.id}/leaderboard?split=train", headers=world.headers["viewer"]
    ).json()
    assert other_split["rows"] == []
    everything = client.get(f"/api/projects/{world.project.id}/leaderboard", headers=world.headers["viewer"]).json()
    assert {row["structure"] for row in everything["rows"]} == set(STRUCTURES)
    listed = client.get(f"/api/projects/{world.project.id}/evaluations", headers=world.headers["viewer"]).json()
    assert listed["total"] == 2 and listed["items"][0]["status"] == "succeeded"
    unknown = client.get(
        f"/api/projects/{world.project.id}/leaderboard?structure=heart", headers=world.headers["viewer"]
    )
    assert unknown.status_code == 422


def test_explicit_versions_against_approved_ground_truth(
    client: TestClient, db: Session, world: World, blobs: LocalBlobStore, seeded: Seeded
) -> None:
    versions = [seeded.good_versions["A"], seeded.good_versions["C"]]
    url = f"/api/projects/{world.project.id}/settings"
    for bad in ({"nsd_tolerance_mm": {"no_such_organ": 2.0}}, {"nsd_tolerance_mm": -1}, {"tolerance": 2}):
        refused = client.patch(url, headers=world.headers["lead"], json={"evaluation": bad})
        assert refused.status_code == 422, refused.text
        assert "evaluation" in refused.json()["detail"]
    changed = client.patch(
        url, headers=world.headers["lead"], json={"evaluation": {"nsd_tolerance_mm": {"pancreas": 2}}}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["settings"]["evaluation"] == {"nsd_tolerance_mm": {"pancreas": 2.0}}
    created = _create(client, world, version_ids=versions, structures=["pancreas", "spleen"], split="all")
    assert created.status_code == 201, created.text
    assert created.json()["config"]["nsd_tolerance_mm"] == {"pancreas": 2.0}  # the project's setting
    run = _execute(db, blobs, created.json()["id"])
    assert run.model_version_id is None
    cases = client.get(f"/api/evaluations/{run.id}/cases", headers=world.headers["viewer"]).json()["cases"]
    assert [(c["case_id"], c["dsc"]) for c in cases] == [("case-A", 1.0), ("case-C", 1.0)]
    assert {c["nsd_tolerance_mm"] for c in cases} == {2.0}
    # The spleen was never annotated (missing, not empty): skipped and listed, never scored as empty.
    assert run.summary["skipped_count"] == 2
    assert {(s["case_id"], s["structure"], s["reason"]) for s in run.summary["skipped"]} == {
        ("case-A", "spleen", "ground truth missing"),
        ("case-C", "spleen", "ground truth missing"),
    }
    assert run.summary["detection"] is None  # the lesion structure was not evaluated


def test_bad_requests_are_refused_with_clear_4xx(client: TestClient, db: Session, world: World, seeded: Seeded) -> None:
    unknown = _create(client, world, model_version_id=seeded.good, structures=["liver", "heart"])
    assert unknown.status_code == 422 and "heart" in unknown.json()["detail"]
    never = _create(client, world, model_version_id=seeded.unused)
    assert never.status_code == 422 and "no predictions" in never.json()["detail"]
    # A split whose scans have no approved version.
    scan = db.get(Scan, seeded.scans["C"])
    assert scan is not None
    unapproved = upload_scan(client, world.headers["lead"], world.project.id, small_phantom(seed=9), "case-V")
    row = db.get(Scan, unapproved["id"])
    assert row is not None
    row.split = "val"
    db.flush()
    empty_split = _create(client, world, model_version_id=seeded.good, split="val")
    assert empty_split.status_code == 422 and "approved" in empty_split.json()["detail"]
    nowhere = _create(client, world, model_version_id=seeded.good, split="holdout")
    assert nowhere.status_code == 422 and "holdout" in nowhere.json()["detail"]
    both = _create(client, world, model_version_id=seeded.good, version_ids=[seeded.good_versions["A"]])
    assert both.status_code == 422
    neither = _create(client, world)
    assert neither.status_code == 422
    twice = _create(client, world, version_ids=[seeded.good_versions["A"], seeded.gt["A"]])
    assert twice.status_code == 422
    train_only = _create(client, world, version_ids=[seeded.good_versions["A"]], split="train")
    assert train_only.status_code == 422 and "without an approved version" in train_only.json()["detail"]
    tolerance = _create(client, world, model_version_id=seeded.good, nsd_tolerance_mm=-1)
    assert tolerance.status_code == 422
    bad_detection = _create(client, world, model_version_id=seeded.good, detection={"localisation": "centroid"})
    assert bad_detection.status_code == 422
    foreign = _create(client, world, model_version_id=987654)
    assert foreign.status_code == 404
    assert _create(client, world, role="viewer", model_version_id=seeded.good).status_code == 403
    created = _create(client, world, model_version_id=seeded.good).json()
    assert client.get(f"/api/evaluations/{created['id']}", headers=world.headers["outsider"]).status_code == 404
    # Cases of a run that has not run yet: a conflict, not an empty success.
    pending = client.get(f"/api/evaluations/{created['id']}/cases", headers=world.headers["viewer"])
    assert pending.status_code == 409
