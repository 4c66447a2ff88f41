"""Review comments drawn on the image: a marker at the comment's voxel on the slice that holds it (not on
another slice), its text on click, unresolved only by default, toggled by "Show comments on image"."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import ANNOTATOR, LEAD, LabelledScan, Server, open_scan, screenshot, sign_in_with_token

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def post_comment(server: Server, scan_id: int, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{server.base}/api/scans/{scan_id}/comments", json=body, headers=server.headers(LEAD), timeout=30
    )
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def markers(page: Page) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for m in page.evaluate("window.maskloop.commentMarkers()"):
        out.setdefault(int(m["id"]), []).append(m)
    return out


def test_comments_are_drawn_on_their_slice(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("LPS", seed=51)
    sid = labelled.id
    pinned = post_comment(
        server,
        sid,
        {"voxel": [50, 40, 20], "slice_axis": 2, "slice_index": 20, "structure": "liver", "text": "check this rim"},
    )
    done = post_comment(server, sid, {"voxel": [52, 40, 20], "text": "already fixed"})
    whole = post_comment(server, sid, {"slice_axis": 2, "slice_index": 20, "text": "whole slice looks noisy"})
    resolved = httpx.patch(
        f"{server.base}/api/comments/{done['id']}", json={"resolved": True}, headers=server.headers(LEAD)
    )
    assert resolved.status_code == 200, resolved.text
    sign_in_with_token(page, server, ANNOTATOR)
    open_scan(page, server, sid)
    ras = page.evaluate("window.maskloop.toRAS([50, 40, 20])")
    # On the comment's slice: one ring in the axial view, at the voxel's place on screen.
    page.evaluate("(v) => window.maskloop.moveTo(v)", ras)
    placed = markers(page)
    assert sorted(placed) == sorted([pinned["id"], whole["id"]]), placed  # the resolved one is hidden by default
    (m,) = placed[pinned["id"]]
    assert m["plane"] == 0 and m["kind"] == "voxel"
    assert [(w["plane"], w["kind"]) for w in placed[whole["id"]]] == [(0, "slice")]
    marker = page.get_by_test_id(f"comment-marker-{pinned['id']}")
    expect(marker).to_be_visible()
    expect(marker).to_have_attribute("title", "check this rim — Demo Lead")
    box = marker.bounding_box()
    assert box is not None
    at = page.evaluate("(v) => window.maskloop.clientPointOf(v, 0)", ras)
    assert abs(box["x"] + box["width"] / 2 - at["x"]) < 2 and abs(box["y"] + box["height"] / 2 - at["y"]) < 2
    # In the multiplanar layout the voxel's ring is in all three views (the crosshair is on it).
    page.evaluate("window.maskloop.setLayout('multiplanar')")
    page.wait_for_function("window.maskloop.state().layout === 'multiplanar'")
    placed = markers(page)
    assert sorted(p["plane"] for p in placed[pinned["id"]]) == [0, 1, 2], placed
    assert [p["plane"] for p in placed[whole["id"]]] == [0]
    page.evaluate("window.maskloop.setLayout('axial')")
    # Another axial slice: no marker.
    page.evaluate("(v) => window.maskloop.moveTo(v)", [ras[0], ras[1], ras[2] + 3])
    assert markers(page) == {}
    expect(page.get_by_test_id(f"comment-marker-{pinned['id']}")).to_have_count(0)
    # Back on it: clicking the marker shows the text.
    page.evaluate("(v) => window.maskloop.moveTo(v)", ras)
    assert sorted(markers(page)) == sorted([pinned["id"], whole["id"]])
    page.get_by_test_id(f"comment-marker-{pinned['id']}").click()
    expect(page.get_by_test_id("comment-popup")).to_be_visible()
    expect(page.get_by_test_id("comment-popup-text")).to_have_text("check this rim")
    screenshot(page, "comment-marker")
    assert page.evaluate("window.maskloop.state().dirty") == []  # a click on a marker never paints
    # The checkboxes: resolved ones on request; all off.
    page.get_by_test_id("tab-review").click()
    page.get_by_test_id("comments-include-resolved").check()
    assert sorted(markers(page)) == sorted([pinned["id"], done["id"], whole["id"]])
    page.get_by_test_id("comments-on-image").uncheck()
    assert markers(page) == {}
    expect(page.locator(".comment-marker")).to_have_count(0)
    page.get_by_test_id("comments-on-image").check()
    # Resolving from the popup hides it again (unresolved only).
    page.get_by_test_id("comments-include-resolved").uncheck()
    page.get_by_test_id(f"comment-marker-{pinned['id']}").click()
    page.get_by_test_id("comment-popup-resolved").check()
    expect(page.get_by_test_id(f"comment-marker-{pinned['id']}")).to_have_count(0)
    comments = httpx.get(f"{server.base}/api/scans/{sid}/comments", headers=server.headers(LEAD)).json()
    assert {c["id"]: c["resolved"] for c in comments} == {pinned["id"]: True, done["id"]: True, whole["id"]: False}
