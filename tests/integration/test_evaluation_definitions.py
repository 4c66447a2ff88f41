"""Evaluation runs name their metric definition; the report, the options a page needs, the detection default."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend.core.blobstore import LocalBlobStore
from backend.evaluation import detection, metrics
from backend.labels import service as labels
from backend.models import Scan
from tests.conftest import World
from tests.integration.test_evaluation import Seeded, _create, _execute, seeded

__all__ = ["seeded"]  # the fixture, re-exported for pytest


def _stored(client: TestClient, world: World, run_id: int) -> dict[tuple[str, str], dict[str, object]]:
    cases = client.get(f"/api/evaluations/{run_id}/cases", headers=world.headers["viewer"]).json()
    return {(c["case_id"], c["structure"]): c for c in cases["cases"]}


@pytest.mark.parametrize("definition", ["lorensen", "monai"])
def test_a_run_uses_and_states_the_chosen_definition(
    client: TestClient, db: Session, world: World, blobs: LocalBlobStore, seeded: Seeded, definition: str
) -> None:
    body = {"model_version_id": seeded.good, "structures": ["liver"], "metric_definition": definition}
    created = _create(client, world, **body)
    assert created.status_code == 201, created.text
    assert created.json()["metric_definition"] == definition
    assert created.json()["nsd_definition"] == metrics.METRIC_DEFINITIONS[definition]
    run_id = created.json()["id"]
    _execute(db, blobs, run_id)
    stored = _stored(client, world, run_id)
    scan = db.get(Scan, seeded.scans["A"])
    assert scan is not None
    gt = labels.read_mask(blobs, scan, labels.structure_entry(db, labels.get_version(db, seeded.gt["A"]), "liver")[1])
    pred_version = labels.get_version(db, seeded.good_versions["A"])
    pred = labels.read_mask(blobs, scan, labels.structure_entry(db, pred_version, "liver")[1])
    expected = metrics.evaluate_pair(gt, pred, scan.spacing, definition=definition)
    default = metrics.evaluate_pair(gt, pred, scan.spacing)
    assert stored[("case-A", "liver")]["nsd"] == pytest.approx(expected.nsd, abs=1e-12)
    assert stored[("case-A", "liver")]["hd95"] == pytest.approx(expected.hd95, abs=1e-12)
    if definition == "monai":  # boundary voxels differ from area-weighted surfels on this dilated liver
        assert expected.nsd != pytest.approx(default.nsd, abs=1e-6)
    report = client.get(f"/api/evaluations/{run_id}/report", headers=world.headers["viewer"])
    assert report.status_code == 200, report.text
    document = report.json()
    assert document["status"] == "succeeded" and document["metric_definition"] == definition
    assert document["summary"]["metric_definition"] == definition
    assert document["summary"]["nsd_definition"] == metrics.METRIC_DEFINITIONS[definition]
    assert len(document["cases"]) == 3 and "pairs" not in document["config"]
    assert {case["metric_definition"] for case in document["cases"]} == {definition}
    csv_text = client.get(f"/api/evaluations/{run_id}/cases?format=csv", headers=world.headers["viewer"]).text
    assert csv_text.splitlines()[0].endswith(",metric_definition") and csv_text.splitlines()[1].endswith(definition)
    # The leaderboard ranks runs of one definition at a time (the project's default unless asked).
    board = f"/api/projects/{world.project.id}/leaderboard"
    assert client.get(board, headers=world.headers["viewer"]).json()["rows"] == []
    chosen = client.get(f"{board}?metric_definition={definition}", headers=world.headers["viewer"]).json()
    assert chosen["metric_definition"] == definition and [r["run_id"] for r in chosen["rows"]] == [run_id]
    assert client.get(f"{board}?metric_definition=euclid", headers=world.headers["viewer"]).status_code == 422


def test_project_settings_set_the_definition_and_the_detection_threshold(
    client: TestClient, db: Session, world: World, blobs: LocalBlobStore, seeded: Seeded
) -> None:
    url = f"/api/projects/{world.project.id}/settings"
    for bad in (
        {"metric_definition": "hausdorff"},
        {"detection_min_volume_mm3": -1},
        {"detection_min_volume_mm3": "big"},
        {"detection_min_volume_mm3": 1e9},
    ):
        refused = client.patch(url, headers=world.headers["lead"], json={"evaluation": bad})
        assert refused.status_code == 422 and "evaluation." in refused.json()["detail"], refused.text
    # Documented defaults: DeepMind's definition, 50 mm³.
    default_run = _create(client, world, model_version_id=seeded.good).json()
    assert default_run["metric_definition"] == "deepmind"
    assert default_run["config"]["detection"]["min_volume_mm3"] == detection.DEFAULT_MIN_VOLUME_MM3 == 50.0
    # Case C's false positive is 18 voxels of 3×3×6 mm = 972 mm³: a threshold above it makes C tumour-free.
    changed = client.patch(
        url,
        headers=world.headers["lead"],
        json={"evaluation": {"metric_definition": "lorensen", "detection_min_volume_mm3": 1000}},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["settings"]["evaluation"] == {
        "metric_definition": "lorensen",
        "detection_min_volume_mm3": 1000.0,
    }
    run = _create(client, world, model_version_id=seeded.good).json()
    assert run["metric_definition"] == "lorensen" and run["config"]["detection"]["min_volume_mm3"] == 1000.0
    _execute(db, blobs, run["id"])
    summary = client.get(f"/api/evaluations/{run['id']}", headers=world.headers["viewer"]).json()["summary"]
    assert summary["detection"]["specificity"] == 1.0 and summary["detection"]["false_positive_components"] == 0
    assert summary["detection"]["config"]["min_volume_mm3"] == 1000.0
    # A request still overrides the project's choice.
    explicit = _create(
        client, world, model_version_id=seeded.good, metric_definition="deepmind", detection={"min_volume_mm3": 0}
    ).json()
    assert explicit["metric_definition"] == "deepmind" and explicit["config"]["detection"]["min_volume_mm3"] == 0.0
    bad = _create(client, world, model_version_id=seeded.good, metric_definition="surface")
    assert bad.status_code == 422


def test_options_list_what_a_lead_can_start(client: TestClient, world: World, seeded: Seeded) -> None:
    response = client.get(f"/api/projects/{world.project.id}/evaluation-options", headers=world.headers["viewer"])
    assert response.status_code == 200, response.text
    options = response.json()
    assert [d["name"] for d in options["metric_definitions"]] == ["deepmind", "lorensen", "monai"]
    assert [d["default"] for d in options["metric_definitions"]] == [True, False, False]
    assert options["defaults"] == {
        "nsd_tolerance_mm": 1.0,
        "detection_min_volume_mm3": 50.0,
        "metric_definition": "deepmind",
    }
    splits = {s["split"]: s for s in options["splits"]}
    assert splits["test"] == {"split": "test", "scans": 3, "approved_scans": 3}
    assert splits["train"]["approved_scans"] == 1 and splits["all"]["scans"] == 4
    versions = {v["model"]: v for v in options["model_versions"]}
    assert set(versions) == {"good", "worse"}  # "unused" predicted nothing
    assert versions["good"]["model_version_id"] == seeded.good and versions["good"]["predicted_scans"] == 4
    assert "pancreatic_lesion" in options["structures"]
    outsider = client.get(f"/api/projects/{world.project.id}/evaluation-options", headers=world.headers["outsider"])
    assert outsider.status_code == 404
    missing = client.get("/api/evaluations/987654/report", headers=world.headers["viewer"])
    assert missing.status_code == 404


def test_queued_report_states_its_definition_before_any_case(client: TestClient, world: World, seeded: Seeded) -> None:
    created = _create(client, world, model_version_id=seeded.good, metric_definition="monai").json()
    report = client.get(f"/api/evaluations/{created['id']}/report", headers=world.headers["viewer"]).json()
    assert report["status"] == "queued" and report["cases"] == [] and report["metric_definition"] == "monai"
    assert np.isclose(report["config"]["nsd_tolerance_mm"], 1.0)
