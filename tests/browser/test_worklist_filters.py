"""The worklist's case-id filter: a late answer to an older filter never replaces the list of the newer one."""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import Page, Route, expect

from backend.imaging.phantom import generate_phantom
from tests.browser.conftest import LEAD, SHAPE, SPACING, Server, sign_in_with_token, wait_ready
from tests.factories import upload_scan

pytestmark = [pytest.mark.browser]


def test_a_late_answer_to_an_older_filter_does_not_replace_the_worklist(page: Page, server: Server) -> None:
    prefix = f"WLFILTER{uuid.uuid4().hex[:10].upper()}"
    with server.client() as client:
        phantom = generate_phantom(SHAPE, SPACING, seed=43)
        upload_scan(client, server.headers(LEAD), server.project_id, phantom, f"{prefix}_43")  # type: ignore[arg-type]

    held: list[Route] = []

    def hold_older_filter(route: Route) -> None:
        # The list for the first, abandoned filter answers only after the list for the second one was shown.
        if "q=ABANDONED" in route.request.url:
            held.append(route)
            return
        route.continue_()

    page.route("**/api/projects/*/**", hold_older_filter)
    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    search = page.get_by_test_id("filter-q")
    search.fill("ABANDONED")
    search.dispatch_event("change")
    page.wait_for_timeout(200)
    assert held, "the worklist never asked for the first filter"
    search.fill(prefix)
    search.dispatch_event("change")
    expect(page.get_by_test_id("scan-count")).to_have_text("1 scan shown")
    for route in held:
        route.continue_()
    page.wait_for_load_state("networkidle")
    expect(page.get_by_test_id("scan-count")).to_have_text("1 scan shown")
    expect(page.get_by_test_id("worklist")).to_contain_text(f"{prefix}_43")
