"""Structure rules and display in real Chromium (issue 13 items 3 and 4): a locked structure is never changed by
strokes across it; the overwrite policy erases the other structure under a stroke only when chosen (and is kept per
user); painting a part adds to its parent and erasing the parent erases the parts, as one undoable edit; the
pre-save check lists parts outside their parent and its one-click fixes resolve them; the palette and the outlines.
Voxel sets are checked against the versions the server saved."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Page, expect

from backend.imaging.phantom import generate_phantom
from tests.browser.conftest import (
    LEAD,
    SHAPE,
    SPACING,
    Server,
    open_scan,
    screenshot,
    sign_in_with_token,
    state,
    wait_ready,
)
from tests.factories import upload_masks, upload_scan

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def activate(page: Page, name: str) -> None:
    page.evaluate("(n) => window.maskloop.setActive(n)", name)
    page.wait_for_function("(n) => window.maskloop.state().active === n", arg=name)


def stroke(page: Page, voxels: list[list[int]]) -> None:
    """A real mouse stroke through the centres of these RAS voxels on the axial view."""
    points = [page.evaluate("([v, p]) => window.maskloop.clientPointOf(v, p)", [v, 0]) for v in voxels]
    assert all(points), "a stroke voxel is not on screen"
    page.mouse.move(points[0]["x"], points[0]["y"])
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(p["x"], p["y"], steps=4)
    page.mouse.up()


def save(page: Page, message: str) -> int:
    saved = page.evaluate("(m) => window.maskloop.save(m)", message)
    assert saved, "the save did not produce a version"
    return int(saved)


def test_lock_and_overwrite_policy(page: Page, server: Server, make_scan: Any) -> None:
    labelled = make_scan("RAS", seed=31)
    liver0 = server.mask(labelled.head, "liver")
    # An axial slice through the liver and three rows five voxels apart that cross its edge (RAS = stored order).
    z = int(np.argmax(liver0.sum(axis=(0, 1))))
    rows = [y for y in range(SHAPE[1]) if liver0[:, y, z].sum() >= 12]
    y1 = rows[len(rows) // 2 - 5]
    ys = [y1, y1 + 5, y1 + 10]
    assert all(liver0[:, y, z].sum() >= 6 for y in ys)

    def across(y: int) -> list[list[int]]:
        x0 = int(np.nonzero(liver0[:, y, z])[0].min())
        return [[x0 - 5, y, z], [x0, y, z], [x0 + 5, y, z]]

    sign_in_with_token(page, server)
    open_scan(page, server, labelled.id)
    page.evaluate("(v) => window.maskloop.moveTo(v)", across(ys[0])[1])
    page.evaluate("window.maskloop.setBrush(4)")

    # Locked: brush and eraser strokes on the liver itself are refused.
    page.get_by_test_id("lock-liver").click()
    expect(page.get_by_test_id("lock-liver")).to_have_attribute("aria-pressed", "true")
    activate(page, "liver")
    page.evaluate("window.maskloop.setTool('brush')")
    stroke(page, across(ys[0]))
    page.evaluate("window.maskloop.setTool('eraser')")
    stroke(page, across(ys[1]))
    assert state(page)["dirty"] == [] and state(page)["undo"] == 0

    # Another structure painted across the locked liver, overwrite "all": the liver stays as it is.
    activate(page, "celiac_artery")
    page.get_by_test_id("overwrite-policy").select_option("all")
    page.evaluate("window.maskloop.setTool('brush')")
    stroke(page, across(ys[0]))
    page.wait_for_function("window.maskloop.state().dirty.includes('celiac_artery')")
    assert state(page)["dirty"] == ["celiac_artery"]

    # Unlocked, overwrite "all": the stroke erases the liver under it (one undo step with the stroke) ...
    page.get_by_test_id("lock-liver").click()
    undo = state(page)["undo"]
    stroke(page, across(ys[1]))
    page.wait_for_function("window.maskloop.state().dirty.includes('liver')")
    assert state(page)["undo"] == undo + 1
    # ... and overwrite "off" leaves it.
    page.get_by_test_id("overwrite-policy").select_option("off")
    stroke(page, across(ys[2]))
    page.wait_for_function("(n) => window.maskloop.state().undo === n", arg=undo + 2)
    version = save(page, "strokes across the liver")

    liver1 = server.mask(version, "liver")
    painted = server.mask(version, "celiac_artery")
    near = [np.zeros_like(painted) for _ in ys]
    for k, y in enumerate(ys):
        near[k][:, max(0, y - 2) : y + 3, :] = True
        near[k] &= painted
    assert all(n.any() for n in near), "every stroke painted"
    assert (near[0] & liver0).any() and (near[2] & liver0).any(), "the strokes crossed the liver"
    removed = liver0 & ~liver1
    assert not (liver1 & ~liver0).any()
    # Exactly the liver voxels under the unlocked "all" stroke were erased; the locked and "off" strokes left it.
    assert np.array_equal(removed, liver0 & near[1]) and removed.any()
    assert int(liver1.sum()) == int(liver0.sum()) - int((liver0 & near[1]).sum())

    # The policy is kept per user in this browser.
    page.get_by_test_id("overwrite-policy").select_option("visible")
    page.reload()
    wait_ready(page)
    expect(page.get_by_test_id("overwrite-policy")).to_have_value("visible")
    assert page.evaluate("window.maskloop.display().overwrite") == "visible"


def make_defective_scan(server: Server, seed: int) -> tuple[int, int, dict[str, np.ndarray]]:
    """A phantom whose imported head and body each have a few voxels outside the pancreas (as PanTS data does)."""
    phantom = generate_phantom(SHAPE, SPACING, seed=seed, orientation="RAS")
    masks = {k: v.copy() for k, v in phantom.masks.items() if v.any()}
    pancreas = masks["pancreas"]
    for part in ("pancreas_head", "pancreas_body"):
        # Two voxels beside the part, outside the pancreas, along +y from the part's outermost voxel.
        xs, ys, zs = np.nonzero(masks[part])
        k = int(np.argmax(ys))
        for dy in (1, 2):
            voxel = (int(xs[k]), int(ys[k]) + dy, int(zs[k]))
            assert not pancreas[voxel]
            masks[part][voxel] = True
    with server.client() as client:
        scan = upload_scan(client, server.headers(LEAD), server.project_id, phantom, f"HIER_{seed}_{os.getpid()}")  # type: ignore[arg-type]
        version = upload_masks(client, server.headers(LEAD), scan["id"], masks, phantom.affine)  # type: ignore[arg-type]
    return int(scan["id"]), int(version["id"]), masks


def test_hierarchy_pre_save_check_palette_and_outlines(page: Page, server: Server) -> None:
    scan_id, _head, masks = make_defective_scan(server, seed=32)
    pancreas0 = masks["pancreas"]
    sign_in_with_token(page, server)
    open_scan(page, server, scan_id)

    # The palette: the schema's distinct colours; the pancreas is drawn as an outline around its parts.
    display = page.evaluate("window.maskloop.display()")
    assert display["colors"]["pancreas"] != display["colors"]["pancreas_head"]
    assert display["colors"]["kidney_left"] != display["colors"]["kidney_right"]
    assert len(set(display["colors"].values())) == len(display["colors"])
    assert "pancreas" in display["outlined"] and "liver" not in display["outlined"]

    # Painting the head outside the pancreas adds the same voxels to the pancreas, in one undoable edit.
    activate(page, "pancreas_head")
    hx, hy, hz = (int(c) for c in np.argwhere(masks["pancreas_head"] & pancreas0)[0])
    new = [[x, y, hz] for x in range(SHAPE[0]) for y in range(SHAPE[1]) if abs(x - hx) <= 1 and hy - 8 <= y <= hy - 7]
    new = [v for v in new if not pancreas0[tuple(v)] and not masks["pancreas_head"][tuple(v)]]
    assert new
    page.evaluate("([s, v]) => window.maskloop.paintNative(s, v, 1)", ["pancreas_head", new])
    assert state(page)["dirty"] == ["pancreas", "pancreas_head"] and state(page)["undo"] == 1
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press("Control+z")
    page.wait_for_function("window.maskloop.state().dirty.length === 0")
    page.keyboard.press("Control+y")
    page.wait_for_function("window.maskloop.state().dirty.length === 2")

    # The pre-save check lists the imported defects (not the painted voxels: the pancreas has them) ...
    page.get_by_test_id("save").click()
    check = page.get_by_test_id("hierarchy-check")
    expect(check).to_have_attribute("data-issues", "2")
    expect(page.get_by_test_id("hierarchy-issue-pancreas_head")).to_have_attribute("data-voxels", "2")
    expect(page.get_by_test_id("hierarchy-issue-pancreas_body")).to_have_attribute("data-voxels", "2")
    expect(page.get_by_test_id("save-confirm")).to_contain_text("anyway")
    # ... and its one-click fixes resolve them: the head's voxels go into the pancreas, the body loses its own.
    page.get_by_test_id("hierarchy-fix-parent-pancreas_head").click()
    expect(check).to_have_attribute("data-issues", "1")
    page.get_by_test_id("hierarchy-fix-part-pancreas_body").click()
    expect(page.get_by_test_id("hierarchy-ok")).to_be_visible()
    expect(page.get_by_test_id("save-confirm")).not_to_contain_text("anyway")
    page.get_by_test_id("save-message").fill("head painted, hierarchy fixed")
    before = state(page)["baseVersionId"]
    page.get_by_test_id("save-confirm").click()
    saved = "(b) => { const s = window.maskloop.state(); return s.saveState === 'saved' && s.baseVersionId !== b }"
    page.wait_for_function(saved, arg=before)
    version = int(state(page)["baseVersionId"])
    assert state(page)["undo"] == 3  # the stroke and the two fixes

    pancreas = server.mask(version, "pancreas")
    head_mask = server.mask(version, "pancreas_head")
    body = server.mask(version, "pancreas_body")
    for v in new:
        assert head_mask[tuple(v)] and pancreas[tuple(v)], f"painted head voxel {v} is not in the saved pancreas"
    assert not (head_mask & ~pancreas).any() and not (body & ~pancreas).any()
    assert np.array_equal(body, masks["pancreas_body"] & pancreas0)
    painted = np.zeros_like(pancreas)
    for v in new:
        painted[tuple(v)] = True
    # The pancreas grew by exactly the painted voxels and the head's imported defect ("add to parent").
    assert np.array_equal(pancreas & ~pancreas0, painted | (masks["pancreas_head"] & ~pancreas0))
    assert not (pancreas0 & ~pancreas).any()

    # Erasing the pancreas erases its parts there.
    activate(page, "pancreas")
    inside = [[int(c) for c in v] for v in np.argwhere(head_mask & pancreas)[:6]]
    page.evaluate("([s, v]) => window.maskloop.paintNative(s, v, 0)", ["pancreas", inside])
    assert "pancreas_head" in state(page)["dirty"]
    version2 = save(page, "erase pancreas")
    head2 = server.mask(version2, "pancreas_head")
    assert not any(head2[tuple(v)] for v in inside)
    assert int(head2.sum()) == int(head_mask.sum()) - len(inside)

    # Outline all: every visible structure is drawn as an outline in the overlay.
    page.evaluate("(v) => window.maskloop.moveTo(v)", [hx, hy, hz])
    page.get_by_test_id("outline-all").check()
    page.wait_for_function("window.maskloop.display().outlined.includes('liver')")
    page.wait_for_function("window.maskloop.display().outlineVoxels > 0")
    screenshot(page, "structure-outline-all")
    page.get_by_test_id("outline-all").uncheck()
    page.get_by_test_id("outline-liver").click()
    page.wait_for_function(
        "() => { const d = window.maskloop.display(); "
        "return d.outlined.includes('liver') && !d.outlined.includes('spleen') }"
    )
    assert page.evaluate("window.maskloop.display().rim") == 1  # the active pancreas: an outline around its parts
    screenshot(page, "structure-outlines")
