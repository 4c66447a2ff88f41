"""Review comments drawn on the image: a marker at the comment's voxel on the slice that holds it (not on
another slice), its text on click, unresolved only by default, toggled by "Show comments on image"."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page, expect
from scipy import ndimage

from tests.browser.conftest import ANNOTATOR, LEAD, LabelledScan, Server, open_scan, screenshot, sign_in_with_token

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REVIEWER = "reviewer@maskloop.local"


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


def test_comment_is_pinned_to_the_structure_under_the_clicked_voxel(page: Page, server: Server, make_scan: Any) -> None:
    """A reviewer clicks a voxel of the spleen while the liver is active: the comment is about the spleen (not the
    active liver); the form can pin the next one to another structure, then follows the voxel again."""
    labelled: LabelledScan = make_scan("LPS", seed=53)
    sid = labelled.id
    masks = labelled.phantom.masks
    # A spleen voxel far from its edge (and from every other structure), in the scan's stored order.
    depth = ndimage.distance_transform_edt(masks["spleen"])
    spleen = [int(v) for v in np.unravel_index(int(np.argmax(depth)), depth.shape)]
    assert not any(m[tuple(spleen)] for name, m in masks.items() if name != "spleen")
    sign_in_with_token(page, server, REVIEWER)
    open_scan(page, server, sid)
    page.evaluate("window.maskloop.setActive('liver')")
    page.wait_for_function("window.maskloop.state().active === 'liver'")
    page.get_by_test_id("tab-review").click()
    ras = page.evaluate("(v) => window.maskloop.toRAS(v)", spleen)
    # Show the spleen's slice, the crosshair elsewhere on it, then click the spleen voxel (Navigate moves it there).
    page.evaluate("(v) => window.maskloop.moveTo(v)", [2, 2, ras[2]])
    at = page.evaluate("(v) => window.maskloop.clientPointOf(v, 0)", ras)
    page.mouse.click(at["x"], at["y"])
    page.wait_for_function("(v) => window.maskloop.crosshair().join() === v.join()", arg=ras)
    assert page.evaluate("window.maskloop.state().active") == "liver"
    picker = page.get_by_test_id("comment-structure")
    expect(picker).to_have_value("spleen")
    expect(picker).to_have_attribute("data-mode", "voxel")
    expect(page.get_by_test_id("comment-structure-mode")).to_have_text("under the crosshair")
    page.get_by_test_id("comment-text").fill("spleen tip is cut off")
    page.get_by_test_id("comment-post").click()
    expect(page.get_by_test_id("comment-list")).to_contain_text("spleen tip is cut off")
    # The reviewer changes the structure in the form: the next comment is pinned to it.
    picker.select_option("pancreas")
    expect(picker).to_have_attribute("data-mode", "chosen")
    page.get_by_test_id("comment-text").fill("the pancreas reaches this far")
    page.get_by_test_id("comment-post").click()
    expect(page.get_by_test_id("comment-list")).to_contain_text("the pancreas reaches this far")
    # After that comment the form follows the voxel again.
    expect(picker).to_have_value("spleen")
    expect(picker).to_have_attribute("data-mode", "voxel")
    comments = httpx.get(f"{server.base}/api/scans/{sid}/comments", headers=server.headers(LEAD), timeout=30).json()
    pinned = {c["text"]: c for c in comments}
    assert pinned["spleen tip is cut off"]["structure"] == "spleen"
    assert pinned["spleen tip is cut off"]["voxel"] == spleen
    assert pinned["the pancreas reaches this far"]["structure"] == "pancreas"
    assert pinned["the pancreas reaches this far"]["voxel"] == spleen
    # On background the active structure is the default (the reviewer points at where it is missing).
    page.evaluate("(v) => window.maskloop.moveTo(v)", [1, 1, ras[2]])
    expect(picker).to_have_value("liver")
    expect(picker).to_have_attribute("data-mode", "active")
