"""The dataset imports page (#/imports) against a real `maskloop serve` and its solo `cpu` worker: a lead imports a
tiny 3-case PanTS-layout folder with one truncated CT from under the import root, follows the run to its end, sees
2 cases imported and the corrupt one failed with its file and reason (filterable to failures), re-runs it (the
failed case is retried, the imported ones stay); a folder outside the import root shows the API's refusal; an
annotator gets neither the page nor the API.

The session server of conftest.py has no import root (the API then refuses every import), so this module starts
its own server with MASKLOOP_IMPORT_ROOT set, on a one-case demo project."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from backend.imaging.phantom import write_pants_dataset
from tests.browser.conftest import ANNOTATOR, LEAD, Server, serving, sign_in_with_token, wait_ready

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Tiny volumes: three cases import in about a second each on the solo worker.
SHAPE, SPACING = (32, 32, 16), (6.0, 6.0, 8.0)
# Not the demo project's PanTS_00000001, which the import would report as skipped.
CASES = ["PanTS_00000701", "PanTS_00000702", "PanTS_00000703"]
CORRUPT = CASES[1]


def _tiny_dataset(root: Path) -> None:
    """Three cases in the PanTS layout under their own ids; the second one's CT truncated to half its bytes."""
    written = write_pants_dataset(root, len(CASES), shape=SHAPE, spacing=SPACING, seed=9)
    sheet = (root / "metadata.csv").read_text()
    for old, new in zip(written, CASES, strict=True):
        (root / "ImageTr" / old).rename(root / "ImageTr" / new)
        (root / "LabelTr" / old).rename(root / "LabelTr" / new)
        sheet = sheet.replace(old, new)
    (root / "metadata.csv").write_text(sheet)
    ct = root / "ImageTr" / CORRUPT / "ct.nii.gz"
    data = ct.read_bytes()
    ct.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def import_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`maskloop demo-data` (one 32-voxel phantom) then `maskloop serve` with an import root holding the dataset."""
    base_dir = tmp_path_factory.mktemp("imports-page")
    data, import_root = base_dir / "data", base_dir / "import-root"
    _tiny_dataset(import_root / "tiny")
    # The page needs no click-refinement worker (it would load its model for nothing), and a quicker poll of the
    # SQLite broker lets the solo worker take each case's job sooner.
    extra = {
        "MASKLOOP_IMPORT_ROOT": str(import_root),
        "MASKLOOP_INTERACTIVE_WORKER": "false",
        "MASKLOOP_BROKER_POLL_S": "0.2",
    }
    with serving(data, extra, ["--cases", "1", "--size", "32"], (LEAD, ANNOTATOR)) as running:
        yield running


def test_lead_imports_a_dataset_and_sees_the_corrupt_case_named(page: Page, import_server: Server) -> None:
    server = import_server
    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    page.get_by_test_id("nav-imports").click()
    expect(page.get_by_test_id("imports-no-runs")).to_be_visible()

    # A folder outside the import root: the API's 403 and its reason, and no run.
    page.get_by_test_id("imports-path").fill("/etc")
    page.get_by_test_id("imports-start").click()
    error = page.get_by_test_id("imports-error")
    expect(error).to_contain_text("403")
    expect(error).to_contain_text("outside the import root")
    expect(page.get_by_test_id("imports-no-runs")).to_be_visible()

    page.get_by_test_id("imports-path").fill("tiny")
    page.get_by_test_id("imports-start").click()
    expect(error).to_be_hidden()
    report = page.get_by_test_id("imports-report")
    expect(report).to_have_attribute("data-status", "finished", timeout=90_000)
    expect(page.get_by_test_id("imports-progress")).to_have_attribute("aria-valuenow", "3")
    expect(page.get_by_test_id("imports-totals")).to_contain_text("3 of 3 cases done: 2 imported · 1 failed of 3")
    for case in CASES:
        expect(page.get_by_test_id(f"imports-case-{case}")).to_have_attribute(
            "data-status", "failed" if case == CORRUPT else "imported"
        )
    corrupt = page.get_by_test_id(f"imports-case-{CORRUPT}")
    expect(corrupt.locator(".imports-file")).to_have_text(f"ImageTr/{CORRUPT}/ct.nii.gz")
    expect(corrupt.locator(".imports-reason")).to_contain_text("truncated")
    run_row = page.locator("[data-testid^=imports-run-]")
    expect(run_row).to_have_count(1)
    expect(run_row).to_have_attribute("data-status", "finished")
    expect(run_row).to_contain_text("2 imported · 1 failed of 3")

    # Failures only: the corrupt case alone; the filter stays in the URL.
    page.get_by_test_id("imports-filter").select_option("failed")
    expect(page.get_by_test_id("imports-cases").locator("tbody tr")).to_have_count(1)
    expect(page.get_by_test_id(f"imports-case-{CORRUPT}")).to_be_visible()
    assert "status=failed" in page.url

    # Re-run: the failed case is retried (still corrupt, so it fails again); the imported ones stay imported.
    page.get_by_test_id("imports-resume").click()
    expect(run_row.locator("td").nth(5)).to_have_text("2", timeout=30_000)
    expect(report).to_have_attribute("data-status", "finished", timeout=90_000)
    expect(page.get_by_test_id("imports-totals")).to_contain_text("2 imported · 1 failed of 3")
    expect(corrupt.locator(".imports-reason")).to_contain_text("2 attempts")


def test_annotator_gets_no_imports_page(page: Page, import_server: Server) -> None:
    server = import_server
    sign_in_with_token(page, server, ANNOTATOR)
    page.goto(f"{server.base}/#/imports?project={server.project_id}")
    wait_ready(page)
    expect(page.get_by_test_id("not-allowed")).to_contain_text("imports page is for project leads and admins")
    expect(page.get_by_test_id("nav-imports")).to_have_count(0)
    expect(page.get_by_test_id("imports-launch")).to_have_count(0)
    # The API decides the same: no import by an annotator.
    response = httpx.post(
        f"{server.base}/api/projects/{server.project_id}/imports",
        json={"path": "tiny"},
        headers=server.headers(ANNOTATOR),
        timeout=30,
    )
    assert response.status_code == 403, response.text
