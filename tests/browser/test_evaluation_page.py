"""The evaluation page: a lead starts an evaluation run from the browser (model version, split, structures, metric
definition, NSD tolerances, detection threshold), the report page follows the run (run by `maskloop serve`'s solo
worker) until it has finished and shows the per-structure metrics the API's report holds."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page, expect

from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import generate_phantom
from tests.browser.conftest import LEAD, SHAPE, SPACING, Server, screenshot, sign_in_with_token, wait_ready
from tests.factories import upload_masks

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# A split of this test's own scans, so that the run evaluates exactly them.
SPLIT = f"evalpage{os.getpid() % 100000}"
STRUCTURES = ["liver", "spleen", "kidney_left"]


def wait_for(server: Server, path: str, limit: float = 240) -> dict[str, Any]:
    """Poll a job or run until it has finished (or the limit passed)."""
    deadline = time.monotonic() + limit
    while True:
        body = dict(server.get(path, LEAD))
        if body["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return body
        time.sleep(1.0)


def act(server: Server, scan_id: int, action: str, **body: Any) -> None:
    response = httpx.post(
        f"{server.base}/api/scans/{scan_id}/transitions",
        json={"action": action, **body},
        headers=server.headers(LEAD),
        timeout=60,
    )
    assert response.status_code == 200, f"{action}: {response.text}"


def approved_scan_with_prediction(server: Server, seed: int) -> int:
    """Import a phantom in SPLIT, pre-annotate it with classical-hu, save the ground truth over it and approve it."""
    phantom = generate_phantom(SHAPE, SPACING, seed=seed)
    case = f"EVALPAGE_{seed}_{os.getpid()}"
    with server.client() as client:
        lead = server.headers(LEAD)
        created = client.post(
            f"/api/projects/{server.project_id}/scans",
            headers=lead,
            files={"file": (f"{case}.nii.gz", to_nifti_gz(phantom.volume, phantom.affine), "application/gzip")},
            data={"case_id": case, "split": SPLIT},
        )
        assert created.status_code == 201, created.text
        scan_id = int(created.json()["id"])
        queued = client.post(
            f"/api/projects/{server.project_id}/preannotate",
            json={"model": "classical-hu", "scan_ids": [scan_id]},
            headers=lead,
        )
        assert queued.status_code == 201, queued.text
        job = wait_for(server, f"/api/jobs/{queued.json()[0]['id']}")
        assert job["status"] == "succeeded", job
        head = server.get(f"/api/scans/{scan_id}", LEAD)["head_version_id"]
        masks = {k: v for k, v in phantom.masks.items() if v.any()}
        truth = upload_masks(
            client,  # type: ignore[arg-type]
            lead,
            scan_id,
            masks,
            phantom.affine,
            base_version_id=head,
            kind="human",
            message="ground truth over the AI draft",
        )
    act(server, scan_id, "submit", version_id=truth["id"])
    act(server, scan_id, "start_review")
    review = httpx.post(
        f"{server.base}/api/scans/{scan_id}/reviews",
        json={"version_id": truth["id"], "decision": "approve"},
        headers=server.headers(LEAD),
        timeout=60,
    )
    assert review.status_code == 201, review.text
    return scan_id


def cells(page: Page, testid: str) -> dict[str, list[str]]:
    """A data table's rows by their data-structure attribute."""
    rows = page.get_by_test_id(testid).locator("tbody tr")
    return {
        str(row.get_attribute("data-structure")): [c.strip() for c in row.locator("td").all_text_contents()]
        for row in rows.all()
    }


def fmt(x: float | None, digits: int) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def test_lead_starts_an_evaluation_and_reads_its_report(page: Page, server: Server) -> None:
    scans = [approved_scan_with_prediction(server, seed) for seed in (71, 72)]
    options = server.get(f"/api/projects/{server.project_id}/evaluation-options", LEAD)
    classical = next(m for m in options["model_versions"] if m["model"] == "classical-hu" and m["promoted"])
    assert classical["predicted_scans"] >= len(scans)
    assert {"split": SPLIT, "scans": 2, "approved_scans": 2} in options["splits"]

    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    page.get_by_test_id("nav-evaluations").click()
    wait_ready(page)
    form = page.get_by_test_id("eval-form")
    expect(form).to_be_visible()
    expect(page.get_by_test_id("evaluations-page")).not_to_contain_text("POST /api/")
    # The choices are the ones the API advertises, the project's defaults preselected.
    definitions = page.get_by_test_id("eval-metric-definition").locator("option")
    names = [d["name"] for d in options["metric_definitions"]]
    assert definitions.evaluate_all("els => els.map(e => e.value)") == names
    expect(page.get_by_test_id("eval-metric-definition")).to_have_value(options["defaults"]["metric_definition"])
    splits = page.get_by_test_id("eval-split").locator("option").evaluate_all("els => els.map(e => e.value)")
    assert splits == [s["split"] for s in options["splits"]]

    # A run of classical-hu on this test's split: three structures, the Lorensen definition, NSD at 2 mm (3 mm for
    # the spleen), detection counting lesions from 10 mm³.
    page.get_by_test_id("eval-name").fill("browser-started run")
    page.get_by_test_id("eval-source").select_option(str(classical["model_version_id"]))
    page.get_by_test_id("eval-split").select_option(SPLIT)
    page.get_by_test_id("eval-all-structures").uncheck()
    for name in STRUCTURES:
        page.get_by_test_id(f"eval-structure-{name}").check()
    page.get_by_test_id("eval-metric-definition").select_option("lorensen")
    expect(page.get_by_test_id("eval-definition-text")).to_contain_text("lorensen")
    page.get_by_test_id("eval-tolerance").fill("2")
    page.locator(".eval-tolerances summary").click()
    page.get_by_test_id("eval-tolerance-spleen").fill("3")
    page.locator(".eval-detection summary").click()
    page.get_by_test_id("eval-min-volume").fill("10")
    # A bad value is refused in the page, before any request.
    page.get_by_test_id("eval-tolerance").fill("0")
    page.get_by_test_id("eval-start").click()
    expect(page.get_by_test_id("eval-error")).to_contain_text("NSD tolerance")
    page.get_by_test_id("eval-tolerance").fill("2")
    screenshot(page, "lead-evaluation-form")
    page.get_by_test_id("eval-start").click()

    # The page opens the new run's report, which follows the run until it has finished.
    page.wait_for_url(re.compile(r"#/evaluations/\d+"))
    run_id = int(page.url.split("#/evaluations/")[1].split("?")[0])
    expect(page.get_by_test_id("run-name")).to_contain_text("browser-started run")
    expect(page.get_by_test_id("structure-table")).to_be_visible(timeout=240_000)
    expect(page.get_by_test_id("run-status")).to_have_attribute("data-status", "succeeded")

    report = server.get(f"/api/evaluations/{run_id}/report", LEAD)
    assert report["status"] == "succeeded"
    config = report["config"]
    assert config["split"] == SPLIT
    assert sorted(config["structures"]) == sorted(STRUCTURES)
    assert config["metric_definition"] == report["metric_definition"] == "lorensen"
    assert config["nsd_tolerance_mm"] == {"default": 2.0, "spleen": 3.0}
    assert config["detection"]["min_volume_mm3"] == 10.0
    assert report["model_version_id"] == classical["model_version_id"]
    assert {c["scan_id"] for c in report["cases"]} == set(scans)

    # The report states its definition and shows, per structure, the numbers of the API's report.
    definition = page.get_by_test_id("nsd-definition")
    expect(definition).to_have_attribute("data-definition", "lorensen")
    expect(definition).to_contain_text(report["nsd_definition"])
    expect(definition).to_contain_text("2 mm")
    expect(page.get_by_test_id("run-what")).to_contain_text(f"split {SPLIT}")
    structures = report["summary"]["structures"]
    assert sorted(structures) == sorted(STRUCTURES)
    rows = cells(page, "structure-table")
    assert list(rows) == list(structures)
    for name, block in structures.items():
        row = rows[name]
        assert row[0] == name.replace("_", " ")
        assert int(row[1]) == block["pairs"] == 2, name
        # Real numbers: the classical pre-annotator against the ground truth of two phantoms.
        assert 0.0 < block["dsc"]["mean"] <= 1.0, (name, block)
        assert block["nsd"]["mean"] is not None and 0.0 <= block["nsd"]["mean"] <= 1.0, (name, block)
        assert block["hd95"]["mean"] is not None and np.isfinite(block["hd95"]["mean"]), (name, block)
        assert row[2] == fmt(block["dsc"]["mean"], 3), name
        assert row[3] == fmt(block["dsc"]["median"], 3), name
        assert row[4] == fmt(block["nsd"]["mean"], 3), name
        assert row[7] == fmt(block["hd95"]["mean"], 1), name
        assert row[8] == fmt(block["hd95"]["median"], 1), name
    # Per-case metrics agree with the summary: the mean DSC of the two cases.
    for name in STRUCTURES:
        dsc = [c["dsc"] for c in report["cases"] if c["structure"] == name]
        assert len(dsc) == 2 and abs(float(np.mean(dsc)) - structures[name]["dsc"]["mean"]) < 1e-9
    page.set_viewport_size({"width": 1360, "height": 2000})
    screenshot(page, "lead-evaluation-started")

    # Back on the list, the run is there with its definition.
    page.get_by_test_id("back-to-runs").click()
    wait_ready(page)
    listed = page.get_by_test_id(f"run-row-{run_id}")
    expect(listed).to_contain_text("succeeded")
    expect(listed).to_contain_text("lorensen")
