"""Evaluation on the real stack: a Celery worker runs `maskloop.evaluate`; the pipeline in-process; the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage
from sqlalchemy import func, select
from typer.testing import CliRunner

from backend import cli
from backend.evaluation import service as evaluation
from backend.jobs import outbox
from backend.models import EvaluationCase, Job, Project, User
from tests.factories import small_phantom, upload_masks, upload_scan
from tests.integration.test_evaluation import STRUCTURES, _approve, _model_version, _predict
from tests.integration.worker_stack import Stack, build_stack
from worker.pipelines import evaluate as evaluate_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with build_stack(tmp_path_factory.mktemp("evaluation")) as built:
        yield built


@pytest.fixture(scope="module")
def model_version_id(stack: Stack) -> int:
    """Two approved test scans with ground truth, and one model version's predictions of them."""
    with stack.factory() as db:
        version = _model_version(db, stack.project.id, "dilating")
        db.commit()
        version_id = version.id
    for seed in (11, 12):
        phantom = small_phantom(seed=seed)
        scan_id = int(upload_scan(stack.client, stack.headers["lead"], stack.project.id, phantom, f"ev-{seed}")["id"])
        truth = {name: phantom.masks[name] for name in STRUCTURES}
        gt_id = int(upload_masks(stack.client, stack.headers["lead"], scan_id, truth, phantom.affine)["id"])
        predicted = {name: ndimage.binary_dilation(mask) for name, mask in truth.items()}
        with stack.factory() as db:
            from backend.models import ModelVersion

            row = db.get(ModelVersion, version_id)
            assert row is not None
            _predict(db, stack.blobs, scan_id, row, predicted, np.where(predicted["pancreatic_lesion"], 0.8, 0.0))
            _approve(db, scan_id, gt_id, "test")
            db.commit()
    return version_id


def _report(stack: Stack, run_id: int) -> dict[str, Any]:
    response = stack.client.get(f"/api/evaluations/{run_id}", headers=stack.headers["viewer"])
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_celery_worker_runs_the_evaluation_job(stack: Stack, model_version_id: int) -> None:
    stack.start_worker("eval")
    response = stack.client.post(
        f"/api/projects/{stack.project.id}/evaluations",
        headers=stack.headers["lead"],
        json={"model_version_id": model_version_id},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    done = stack.wait_job(created["job_id"], timeout=180)
    assert done["status"] == "succeeded", done["error"]
    assert done["queue"] == "cpu" and done["result"]["evaluation_run_id"] == created["id"]
    report = _report(stack, created["id"])
    assert report["status"] == "succeeded" and report["summary"]["cases"] == 2
    liver = report["summary"]["structures"]["liver"]
    assert 0.7 < liver["dsc"]["mean"] < 1.0 and liver["hd95"]["median"] > 0
    assert report["summary"]["detection"]["patient_sensitivity"] == 1.0


def test_the_pipeline_in_process_matches_and_a_rerun_replaces_its_results(stack: Stack, model_version_id: int) -> None:
    with stack.factory() as db:
        project = db.get(Project, stack.project.id)
        lead = db.scalar(select(User).where(User.email == "lead@example.org"))
        assert project is not None and lead is not None
        run, job = evaluation.launch(
            db, project, lead, evaluation.EvaluationRequest(model_version_id=model_version_id, name="in-process")
        )
        outbox.withhold(db, [job])  # never dispatched: this process runs it (the stack's worker would take it)
        db.commit()
        run_id, job_id = run.id, job.id
    evaluate_pipeline.run(job_id)
    first = _report(stack, run_id)
    assert first["status"] == "succeeded"
    with stack.factory() as db:
        rows = db.scalar(select(func.count(EvaluationCase.id)).where(EvaluationCase.run_id == run_id))
        assert rows == 2 * len(STRUCTURES)
        # Same inputs as the worker's run: the same numbers.
        worker_runs, _ = evaluation.list_runs(db, stack.project.id)
        by_worker = next((r for r in worker_runs if r.id != run_id and r.status == "succeeded"), None)
        if by_worker is not None:
            assert by_worker.summary["structures"] == first["summary"]["structures"]
        # A redelivered job (its worker died after writing) runs again and replaces, never duplicates.
        row = db.get(Job, job_id)
        assert row is not None
        row.status = "queued"
        db.commit()
    evaluate_pipeline.run(job_id)
    with stack.factory() as db:
        assert db.scalar(select(func.count(EvaluationCase.id)).where(EvaluationCase.run_id == run_id)) == rows
    assert _report(stack, run_id)["summary"]["structures"] == first["summary"]["structures"]


def test_cli_evaluate_sync_writes_json_and_csv(stack: Stack, model_version_id: int, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "report.json"
    common = ["evaluate", "--project", "workers", "--as", "lead@example.org", "--sync"]
    result = runner.invoke(cli.app, [*common, "--model-version", str(model_version_id), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["metric_definition"] == "deepmind" and len(report["cases"]) == 2 * len(STRUCTURES)
    assert "surface-distance" in report["nsd_definition"] and "definition deepmind" in result.output
    csv_out = tmp_path / "cases.csv"
    result = runner.invoke(
        cli.app,
        [
            *common,
            "--model-version",
            str(model_version_id),
            "--structures",
            "liver",
            "--nsd-tolerance",
            "2",
            "--out",
            str(csv_out),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = csv_out.read_text().splitlines()
    assert lines[0].startswith("case_id,") and len(lines) == 3 and ",2.0," in lines[1]
    bad = runner.invoke(cli.app, [*common, "--model-version", str(model_version_id), "--structures", "heart"])
    assert bad.exit_code == 2 and "heart" in bad.output
    monai = runner.invoke(
        cli.app, [*common, "--model-version", str(model_version_id), "--metric-definition", "monai", "--out", str(out)]
    )
    assert monai.exit_code == 0, monai.output
    assert json.loads(out.read_text())["summary"]["metric_definition"] == "monai"
    unknown = runner.invoke(cli.app, [*common, "--model-version", str(model_version_id), "--metric-definition", "x"])
    assert unknown.exit_code == 2 and "metric_definition" in unknown.output
