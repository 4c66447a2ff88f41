"""Scissors in real Chromium: a polygon clicked on a view, closed by a double-click or Enter, previewed, accepted as
one undoable edit and saved as a patch. The saved mask must equal what the server's own `scissors` rule (a voxel is
cut when its centre is inside the polygon, skimage's polygon2mask) gives for the same polygon in the scan's stored
order, on an LPS scan (both in-plane axes run against RAS) in the axial and the coronal view."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Page, expect

from backend.editing.service.scissors import cut, polygon_plane
from tests.browser.conftest import LabelledScan, Server, open_scan, screenshot, sign_in_with_token, state

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STRUCTURE = "liver"


def to_native(ras: list[float], perm: list[int], ras_dims: list[int]) -> list[float]:
    """A continuous RAS voxel position in the scan's stored order (the geometry's permutation and flips)."""
    out = [0.0, 0.0, 0.0]
    for p in range(3):
        axis = abs(perm[p]) - 1
        out[axis] = ras_dims[p] - 1 - ras[p] if perm[p] < 0 else ras[p]
    return out


def storage_polygon(
    points: list[tuple[float, float]], plane: int, slice_index: int, perm: list[int], ras_dims: list[int]
) -> tuple[int, list[list[float]], int]:
    """A polygon drawn on a view (in-plane RAS points) as the server's scissors takes it: the stored axis normal to
    the view, the vertices on the two other stored axes (in increasing order), and the stored index of the slice."""
    u, v, n = {0: (0, 1, 2), 1: (0, 2, 1), 2: (1, 2, 0)}[plane]
    natives = []
    for a, b in points:
        ras = [0.0, 0.0, 0.0]
        ras[u], ras[v], ras[n] = a, b, float(slice_index)
        natives.append(to_native(ras, perm, ras_dims))
    axis = abs(perm[n]) - 1
    first, second = (a for a in range(3) if a != axis)
    return axis, [[p[first], p[second]] for p in natives], round(natives[0][axis])


def pentagon(x0: int, y0: int) -> list[tuple[float, float]]:
    """Vertices on half-voxel positions, edges axis-aligned or of slope 2: no voxel centre lies near an edge, so
    the pixel rounding of real mouse clicks cannot change which voxels are inside."""
    corners = [(0, 0), (12, 0), (16, 8), (16, 12), (0, 12)]
    return [(x0 + dx + 0.5, y0 + dy + 0.5) for dx, dy in corners]


def click_polygon(page: Page, points: list[tuple[float, float]], plane: int, slice_index: int, close: str) -> None:
    """Click the outline's points on the view; close with a double-click on the last one, or with Enter."""
    u, v, n = {0: (0, 1, 2), 1: (0, 2, 1), 2: (1, 2, 0)}[plane]
    clicks = []
    for a, b in points:
        ras = [0.0, 0.0, 0.0]
        ras[u], ras[v], ras[n] = a, b, float(slice_index)
        at = page.evaluate("([v, p]) => window.maskloop.clientPointOf(v, p)", [ras, plane])
        assert at is not None, ras
        hit = page.evaluate("([x, y]) => document.elementFromPoint(x, y)?.tagName", [at["x"], at["y"]])
        assert hit == "CANVAS", f"the point {ras} is covered by {hit}"
        clicks.append((float(at["x"]), float(at["y"])))
    for x, y in clicks[:-1]:
        page.mouse.click(x, y)
    if close == "dblclick":
        page.mouse.dblclick(*clicks[-1])
    else:
        page.mouse.click(*clicks[-1])
        expect(page.get_by_test_id("scissors-panel")).to_have_attribute("data-points", str(len(points)))
        page.keyboard.press("Enter")


def centre_on_slice(mask: np.ndarray, axis: int, index: int) -> tuple[int, int]:
    """The centre (on the two other stored axes) of a mask's voxels on one slice."""
    plane = np.take(mask, index, axis=axis)
    coords = np.argwhere(plane)
    assert len(coords), "the structure is not on this slice"
    return int(np.median(coords[:, 0])), int(np.median(coords[:, 1]))


def open_liver(page: Page, server: Server, labelled: LabelledScan) -> dict[str, Any]:
    sign_in_with_token(page, server)
    open_scan(page, server, labelled.id)
    page.evaluate(f"window.maskloop.setActive('{STRUCTURE}')")
    page.wait_for_function(f"window.maskloop.state().active === '{STRUCTURE}'")
    page.keyboard.press("c")
    expect(page.get_by_test_id("scissors-panel")).to_be_visible()
    expect(page.get_by_test_id("scissors-panel")).to_have_attribute("data-state", "idle")
    return state(page)


def test_scissors_axial_slab_erase_inside(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("LPS", seed=61)
    before = server.mask(labelled.head, STRUCTURE)
    s = open_liver(page, server, labelled)
    perm, dims = s["permRAS"], s["rasDims"]
    assert s["tool"] == "scissors"
    z = int(page.evaluate("window.maskloop.crosshair()")[2])
    # The polygon around the liver's centre on this slice (found in stored order, drawn in RAS).
    k = round(to_native([0, 0, z], perm, dims)[2])
    ci, cj = centre_on_slice(before, 2, k)
    cx, cy = page.evaluate("(v) => window.maskloop.toRAS(v)", [ci, cj, k])[:2]
    points = pentagon(cx - 8, cy - 6)
    page.get_by_test_id("scissors-extent").select_option("slab")
    page.get_by_test_id("scissors-slab").fill("3")
    page.get_by_test_id("scissors-slab").dispatch_event("change")
    click_polygon(page, points, 0, z, close="dblclick")
    panel = page.get_by_test_id("scissors-panel")
    expect(panel).to_have_attribute("data-state", "preview")
    axis, polygon, index = storage_polygon(points, 0, z, perm, dims)
    assert axis == 2 and index == k
    expected = cut(before, (0, 0, 0), polygon, axis, (k - 1, k + 1), keep_inside=False)
    removed = int((before & ~expected).sum())
    assert removed > 50, removed
    expect(panel).to_have_attribute("data-changed", str(removed))
    assert state(page)["dirty"] == []  # a preview never touches the working copy
    screenshot(page, "scissors-preview")
    page.keyboard.press("Enter")
    expect(panel).to_have_attribute("data-state", "idle")
    after = state(page)
    assert after["dirty"] == [STRUCTURE] and after["undo"] == 1
    assert after["count"] == int(expected.sum())
    # One undo step: undone and redone whole.
    page.keyboard.press("Control+z")
    page.wait_for_function("window.maskloop.state().dirty.length === 0")
    assert state(page)["count"] == int(before.sum())
    page.keyboard.press("Control+y")
    page.wait_for_function("(n) => window.maskloop.state().count === n", arg=int(expected.sum()))
    saved = page.evaluate("window.maskloop.save('scissors: erase inside')")
    assert saved
    assert np.array_equal(server.mask(int(saved), STRUCTURE), expected)


def test_scissors_coronal_fill_whole_volume_options_and_cancel(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("LPS", seed=62)
    before = server.mask(labelled.head, STRUCTURE)
    s = open_liver(page, server, labelled)
    perm, dims = s["permRAS"], s["rasDims"]
    page.evaluate("window.maskloop.setLayout('coronal')")
    page.wait_for_function("window.maskloop.state().layout === 'coronal'")
    y = int(page.evaluate("window.maskloop.crosshair()")[1])
    j = round(to_native([0, y, 0], perm, dims)[1])
    ci, ck = centre_on_slice(before, 1, j)
    cras = page.evaluate("(v) => window.maskloop.toRAS(v)", [ci, j, ck])
    points = pentagon(cras[0] - 8, cras[2] - 6)
    panel = page.get_by_test_id("scissors-panel")
    # Esc while drawing drops the outline; nothing changes.
    first = page.evaluate("([v, p]) => window.maskloop.clientPointOf(v, p)", [[cras[0], y, cras[2]], 1])
    page.mouse.click(first["x"], first["y"])
    expect(panel).to_have_attribute("data-state", "drawing")
    page.keyboard.press("Escape")
    expect(panel).to_have_attribute("data-state", "idle")
    assert state(page)["mode"] == "edit"
    # Erase outside a slab of 5: the preview counts; switching to inside recomputes it; reject leaves all as it was.
    page.get_by_test_id("scissors-region").select_option("outside")
    page.get_by_test_id("scissors-extent").select_option("slab")
    page.get_by_test_id("scissors-slab").fill("5")
    page.get_by_test_id("scissors-slab").dispatch_event("change")
    click_polygon(page, points, 1, y, close="enter")
    expect(panel).to_have_attribute("data-state", "preview")
    axis, polygon, index = storage_polygon(points, 1, y, perm, dims)
    assert axis == 1 and index == j
    outside = cut(before, (0, 0, 0), polygon, axis, (j - 2, j + 2), keep_inside=True)
    expect(panel).to_have_attribute("data-changed", str(int((before & ~outside).sum())))
    page.get_by_test_id("scissors-region").select_option("inside")
    inside = cut(before, (0, 0, 0), polygon, axis, (j - 2, j + 2), keep_inside=False)
    expect(panel).to_have_attribute("data-changed", str(int((before & ~inside).sum())))
    page.get_by_test_id("scissors-reject").click()
    expect(panel).to_have_attribute("data-state", "idle")
    assert state(page)["dirty"] == [] and state(page)["undo"] == 0
    # Fill inside through the whole volume (along the coronal normal), accepted with the button, saved.
    page.get_by_test_id("scissors-action").select_option("fill")
    page.get_by_test_id("scissors-extent").select_option("volume")
    click_polygon(page, points, 1, y, close="dblclick")
    expect(panel).to_have_attribute("data-state", "preview")
    prism = np.expand_dims(polygon_plane((before.shape[0], before.shape[2]), polygon, (0, 0)), axis=1)
    expected = before | np.broadcast_to(prism, before.shape)
    added = int((expected & ~before).sum())
    assert added > 100, added
    expect(panel).to_have_attribute("data-changed", str(added))
    page.get_by_test_id("scissors-accept").click()
    expect(panel).to_have_attribute("data-state", "idle")
    assert state(page)["count"] == int(expected.sum()) and state(page)["undo"] == 1
    saved = page.evaluate("window.maskloop.save('scissors: fill inside')")
    assert saved
    assert np.array_equal(server.mask(int(saved), STRUCTURE), expected)
