"""The exports page: a lead queues a PanTS export, follows the job (run by `maskloop serve`'s solo worker) until
it succeeds and downloads a non-empty .tar.gz with the session's token; 4xx errors are shown; an annotator gets
no Exports link and "Not allowed" on the URL."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import (
    ANNOTATOR,
    LEAD,
    LabelledScan,
    Server,
    screenshot,
    sign_in_with_token,
    wait_ready,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_lead_exports_pants_and_downloads_the_archive(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=61)
    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    page.get_by_test_id("nav-exports").click()
    expect(page.get_by_test_id("export-form")).to_be_visible()
    wait_ready(page)
    # The version choice lists head, approved and the project's registered models.
    models = server.get(f"/api/projects/{server.project_id}/models", LEAD)
    options = page.get_by_test_id("export-version").locator("option").evaluate_all("els => els.map(e => e.value)")
    assert options == ["head", "approved"] + [f"model:{m['name']}" for m in models]
    # A 4xx from the server is shown as it is (an unknown scan id).
    page.get_by_test_id("export-scan-ids").fill("999999")
    page.get_by_test_id("export-start").click()
    expect(page.get_by_test_id("export-error")).to_contain_text("999999")
    expect(page.get_by_test_id("export-error")).to_contain_text("not found")
    # A PanTS export of the new scan's head version, two structures.
    page.get_by_test_id("export-format").select_option("pants")
    page.get_by_test_id("export-version").select_option("head")
    page.get_by_test_id("export-all-structures").uncheck()
    page.get_by_test_id("export-structure-liver").check()
    page.get_by_test_id("export-structure-spleen").check()
    page.get_by_test_id("export-scan-ids").fill(str(labelled.id))
    page.get_by_test_id("export-start").click()
    expect(page.get_by_test_id("export-error")).to_be_hidden()
    jobs = server.get(f"/api/projects/{server.project_id}/jobs?kind=export&page_size=5", LEAD)["items"]
    job = jobs[0]
    assert job["params"]["format"] == "pants" and job["params"]["scan_ids"] == [labelled.id]
    assert sorted(job["params"]["structures"]) == ["liver", "spleen"]
    row = page.get_by_test_id(f"export-row-{job['id']}")
    expect(row).to_be_visible()
    # The solo worker runs it; the page follows the job until it has succeeded.
    expect(page.get_by_test_id(f"export-status-{job['id']}")).to_have_attribute(
        "data-status", "succeeded", timeout=180_000
    )
    assert server.get(f"/api/jobs/{job['id']}", LEAD)["status"] == "succeeded"
    screenshot(page, "lead-exports")
    with page.expect_download() as info:
        page.get_by_test_id(f"export-download-{job['id']}").click()
    download = info.value
    assert download.suggested_filename.endswith(".tar.gz")
    data = Path(download.path()).read_bytes()
    assert len(data) > 0
    hooked = page.evaluate("window.maskloop.exports().lastDownload")
    assert hooked["job"] == job["id"] and hooked["bytes"] == len(data)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        names = tar.getnames()
    assert any(labelled.scan["case_id"] in n for n in names), names[:20]


def test_annotator_has_no_exports_page(page: Page, server: Server) -> None:
    sign_in_with_token(page, server, ANNOTATOR)
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    expect(page.get_by_test_id("worklist")).to_be_visible()
    expect(page.get_by_test_id("nav-exports")).to_have_count(0)
    page.goto(f"{server.base}/#/exports?project={server.project_id}")
    wait_ready(page)
    refusal = page.get_by_test_id("not-allowed")
    expect(refusal).to_contain_text("Not allowed")
    expect(refusal).to_contain_text("exports page")
    expect(refusal).to_contain_text("annotator")
    expect(page.get_by_test_id("export-form")).to_have_count(0)
    # The API agrees.
    response = httpx.post(
        f"{server.base}/api/projects/{server.project_id}/exports",
        json={"format": "pants"},
        headers=server.headers(ANNOTATOR),
        timeout=30,
    )
    assert response.status_code in (403, 404)
