"""The loop page: a lead narrows the scans with the worklist's filters, launches pre-annotation of one scan (the job
appears and succeeds, run by `maskloop serve`'s solo worker), then assigns every matching scan to an annotator."""

from __future__ import annotations

import os
import uuid

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from backend.imaging.phantom import generate_phantom
from tests.browser.conftest import ANNOTATOR, LEAD, SHAPE, SPACING, Server, screenshot, sign_in_with_token, wait_ready
from tests.factories import upload_scan

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_lead_preannotates_one_scan_and_assigns_all_matching(page: Page, server: Server) -> None:
    prefix = f"LOOPPAGE{os.getpid()}"
    ids = []
    with server.client() as client:
        for seed in (31, 32):
            phantom = generate_phantom(SHAPE, SPACING, seed=seed)
            scan = upload_scan(client, server.headers(LEAD), server.project_id, phantom, f"{prefix}_{seed}")  # type: ignore[arg-type]
            ids.append(int(scan["id"]))
    first, second = ids
    annotator = next(
        m for m in server.get(f"/api/projects/{server.project_id}/members", LEAD) if m["email"] == ANNOTATOR
    )

    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    page.get_by_test_id("nav-loop").click()
    page.get_by_test_id("loop-filter-q").fill(prefix)
    page.get_by_test_id("loop-filter-q").dispatch_event("change")
    expect(page.get_by_test_id("loop-matching")).to_have_text(f"2 scans matching case id “{prefix}”")

    # Pre-annotate one scan with the classical model: its job appears and succeeds.
    page.get_by_test_id("loop-target").select_option("one")
    page.get_by_test_id("loop-scan").select_option(str(first))
    page.get_by_test_id("loop-model").select_option("classical-hu")
    page.get_by_test_id("loop-preannotate").click()
    job = page.get_by_test_id("loop-jobs").locator("li[data-kind=preannotate]")
    expect(job).to_have_count(1)
    expect(job).to_have_attribute("data-status", "succeeded", timeout=240_000)
    expect(job).to_contain_text(f"scan {first}")
    assert server.get(f"/api/scans/{first}", LEAD)["head_version_id"] is not None
    assert server.get(f"/api/scans/{second}", LEAD)["head_version_id"] is None

    # Assign every scan matching the filter to the annotator.
    page.get_by_test_id("loop-target").select_option("matching")
    page.get_by_test_id("loop-assignee").select_option(str(annotator["user_id"]))
    page.get_by_test_id("loop-assign").click()
    expect(page.get_by_test_id("loop-assigned")).to_have_text("Assigned 2 scans.")
    screenshot(page, "loop-page")
    for scan_id in (first, second):
        task = server.get(f"/api/scans/{scan_id}/task", LEAD)
        assert task["assignee"] and task["assignee"]["id"] == annotator["user_id"], task


def test_a_bad_launch_shows_the_servers_reason(page: Page, server: Server) -> None:
    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/loop?project={server.project_id}")
    page.get_by_test_id("loop-filter-q").fill("NO-SUCH-CASE-XYZ")
    page.get_by_test_id("loop-filter-q").dispatch_event("change")
    expect(page.get_by_test_id("loop-matching")).to_contain_text("0 scans matching")
    page.get_by_test_id("loop-target").select_option("one")
    page.get_by_test_id("loop-preannotate").click()
    expect(page.get_by_test_id("loop-error")).to_contain_text("Choose a scan")
    assert not httpx.get(f"{server.base}/api/health", timeout=5).is_error


def test_a_late_answer_to_an_older_filter_does_not_replace_the_scan_list(page: Page, server: Server) -> None:
    """The page's first (unfiltered) scan list may answer after the lead typed a filter: the older answer is dropped,
    so the scan chosen from the filtered list is the one launched (CI once pre-annotated another scan this way)."""
    prefix = f"LATEFILTER{uuid.uuid4().hex[:10].upper()}"
    with server.client() as client:
        phantom = generate_phantom(SHAPE, SPACING, seed=41)
        scan = upload_scan(client, server.headers(LEAD), server.project_id, phantom, f"{prefix}_41")  # type: ignore[arg-type]

    held: list[Route] = []

    def hold_unfiltered(route: Route) -> None:
        # The first list of the page (no case-id filter) is held until the filtered list has been shown.
        if "q=" not in route.request.url and not held:
            held.append(route)
            return
        route.continue_()

    page.route("**/api/projects/*/scans?*", hold_unfiltered)
    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/loop?project={server.project_id}")
    page.get_by_test_id("loop-filter-q").wait_for()
    page.get_by_test_id("loop-filter-q").fill(prefix)
    page.get_by_test_id("loop-filter-q").dispatch_event("change")
    expect(page.get_by_test_id("loop-matching")).to_have_text(f"1 scan matching case id “{prefix}”")
    assert held, "the page never asked for its unfiltered list"
    held[0].continue_()
    page.wait_for_load_state("networkidle")
    expect(page.get_by_test_id("loop-matching")).to_have_text(f"1 scan matching case id “{prefix}”")
    expect(page.get_by_test_id("loop-scan")).to_have_value(str(scan["id"]))
