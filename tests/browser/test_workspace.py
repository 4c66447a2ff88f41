"""The browser workspace in real Chromium: sign in, worklist, paint with the mouse, save, undo/redo, eraser,
conflicts (rebase and branch), drafts across reloads, version comparison, orientation, expired sessions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page, Route, expect

from backend.cli import DEMO_PASSWORD
from tests.browser.conftest import (
    ANNOTATOR,
    LEAD,
    LabelledScan,
    Server,
    open_scan,
    screenshot,
    sign_in_with_token,
    state,
    wait_ready,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def client_point(page: Page, ras: list[int], plane: int = 0) -> tuple[float, float]:
    point = page.evaluate("([v, p]) => window.maskloop.clientPointOf(v, p)", [ras, plane])
    assert point is not None, f"voxel {ras} is not on screen"
    return float(point["x"]), float(point["y"])


def mouse_stroke(page: Page, points: list[tuple[float, float]]) -> None:
    """A real mouse stroke: press, a few moves, release."""
    page.mouse.move(*points[0])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x, y, steps=3)
    page.mouse.up()


def voxel_under(page: Page, x: float, y: float) -> list[int]:
    hit = page.evaluate("([x, y]) => window.maskloop.voxelAt(x, y)", [x, y])
    assert hit is not None
    return [int(v) for v in hit["vox"]]


def changed_voxels(page: Page, structure: str | None = None) -> dict[str, set[tuple[int, int, int]]]:
    out = page.evaluate("(s) => window.maskloop.changedVoxels(s || undefined)", structure)
    return {key: {tuple(int(c) for c in v) for v in out[key]} for key in ("added", "removed")}  # type: ignore[misc]


def save_with_dialog(page: Page, message: str) -> int:
    before = state(page)["baseVersionId"]
    page.get_by_test_id("save").click()
    page.get_by_test_id("save-message").fill(message)
    page.get_by_test_id("save-confirm").click()
    page.wait_for_function(
        "(b) => { const s = window.maskloop.state(); return s.saveState === 'saved' && s.baseVersionId !== b }",
        arg=before,
    )
    return int(state(page)["baseVersionId"])


def mask_diff(before: np.ndarray, after: np.ndarray) -> dict[str, set[tuple[int, int, int]]]:
    added = {tuple(int(c) for c in v) for v in np.argwhere(after & ~before)}
    removed = {tuple(int(c) for c in v) for v in np.argwhere(before & ~after)}
    return {"added": added, "removed": removed}  # type: ignore[dict-item]


def unchanged_except(server: Server, a: int, b: int, edited: set[str]) -> None:
    """Every structure but the edited ones is identical between versions a and b (server-side diff)."""
    diff = server.get(f"/api/versions/{b}/diff?against={a}")
    for row in diff["structures"]:
        if row["structure"] in edited:
            continue
        assert row["added"] == 0 and row["removed"] == 0, row


def test_sign_in_worklist_filters_and_open(page: Page, server: Server) -> None:
    page.goto(server.base + "/")
    page.get_by_test_id("login-email").fill(ANNOTATOR)
    page.get_by_test_id("login-password").fill("wrong")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_contain_text("Wrong")
    page.get_by_test_id("login-password").fill(DEMO_PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("worklist")).to_be_visible()
    expect(page.get_by_test_id("scan-row-PanTS_00000001")).to_be_visible()
    expect(page.get_by_test_id("scan-row-PanTS_00000002")).to_be_visible()
    scans = server.get(f"/api/projects/{server.project_id}/scans?page_size=500")["items"]
    demo = {s["case_id"]: s for s in scans if s["case_id"].startswith("PanTS_")}
    tumour = next(case for case, s in demo.items() if s["tumor"])
    healthy = next(case for case, s in demo.items() if s["tumor"] is False)
    page.get_by_test_id("filter-tumor").select_option("true")
    expect(page.get_by_test_id(f"scan-row-{healthy}")).to_have_count(0)
    expect(page.get_by_test_id(f"scan-row-{tumour}")).to_be_visible()
    phase = demo[tumour]["phase"]
    page.get_by_test_id("filter-phase").select_option(phase)
    expect(page.get_by_test_id(f"scan-row-{tumour}")).to_be_visible()
    page.get_by_test_id("filter-status").select_option("imported")
    expect(page.get_by_test_id(f"scan-row-{tumour}")).to_be_visible()
    page.get_by_test_id("filter-status").select_option("AI draft")
    expect(page.get_by_test_id(f"scan-row-{tumour}")).to_be_hidden()
    page.get_by_test_id("filter-status").select_option("")
    screenshot(page, "worklist")
    page.get_by_test_id(f"open-{tumour}").click()
    wait_ready(page)
    expect(page.get_by_test_id("case-id")).to_have_text(tumour)
    expect(page.get_by_test_id("loading")).to_be_hidden()
    expect(page.get_by_test_id("save-status")).to_have_text("All changes saved")
    # The readout follows the crosshair: voxel, HU, mm.
    readout = page.get_by_test_id("readout")
    expect(readout).to_contain_text("HU")
    assert page.get_by_test_id("readout-voxel").inner_text() == "48, 48, 24"
    # Layouts and window presets.
    page.keyboard.press("4")
    assert state(page)["layout"] == "multiplanar"
    page.keyboard.press("5")
    assert state(page)["layout"] == "3d"
    page.keyboard.press("2")
    assert state(page)["layout"] == "coronal"
    page.keyboard.press("1")
    page.get_by_test_id("window-preset").select_option("liver")
    assert state(page)["window"] == {"width": 150, "level": 30}
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("w")
    assert state(page)["window"] == {"width": 1800, "level": 400}
    page.get_by_test_id("window-width").fill("500")
    page.get_by_test_id("window-width").press("Tab")
    assert state(page)["window"]["width"] == 500
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("?")
    expect(page.get_by_test_id("help-panel")).to_contain_text("Grow-cut")
    page.keyboard.press("Escape")


def test_mouse_stroke_saves_a_patch_of_the_active_structure_only(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=21)
    sign_in_with_token(page, server)
    open_scan(page, server, labelled.id)
    page.get_by_test_id("structure-row-spleen").click()
    page.wait_for_function("window.maskloop.state().active === 'spleen'")
    before_count = state(page)["count"]
    page.keyboard.press("b")
    page.evaluate("window.maskloop.setBrush(7)")
    z = page.evaluate("window.maskloop.crosshair()")[2]
    points = [client_point(page, [x, 44, z]) for x in (30, 40, 50, 60)]
    expected = [voxel_under(page, x, y) for x, y in points]
    mouse_stroke(page, points)
    page.wait_for_function("window.maskloop.state().dirty.includes('spleen')")
    st = state(page)
    assert st["dirty"] == ["spleen"]
    assert st["count"] > before_count
    expect(page.get_by_test_id("save-status")).to_contain_text("Unsaved changes")
    screenshot(page, "workspace")
    edit = changed_voxels(page, "spleen")
    assert edit["added"] and not edit["removed"]
    new_id = save_with_dialog(page, "spleen brush stroke")
    # The server's version: a child of the old head, only the spleen changed, exactly the painted voxels.
    version = server.get(f"/api/versions/{new_id}")
    assert version["parent_id"] == labelled.head and version["message"] == "spleen brush stroke"
    assert version["kind"] == "human" and version["is_head"]
    assert {r["name"] for r in version["structures"] if r["changed"]} == {"spleen"}
    diff = mask_diff(server.mask(labelled.head, "spleen"), server.mask(new_id, "spleen"))
    assert diff["added"] == edit["added"] and not diff["removed"]
    assert {v[2] for v in diff["added"]} == {z}, "an axial stroke stays on its slice"
    after = server.mask(new_id, "spleen")
    for ras in expected:
        assert after[tuple(ras)], f"the voxel under the mouse {ras} was not painted"
    unchanged_except(server, labelled.head, new_id, {"spleen"})
    assert state(page)["lastSave"]["bodyBytes"] < 2000
    # Reload: the workspace opens the new head and shows the same spleen.
    page.reload()
    wait_ready(page)
    assert state(page)["baseVersionId"] == new_id
    page.evaluate("window.maskloop.setActive('spleen')")
    page.wait_for_function("window.maskloop.state().active === 'spleen'")
    rows = {r["name"]: r for r in version["structures"]}
    assert state(page)["count"] == rows["spleen"]["voxel_count"]
    expect(page.get_by_test_id("structure-count-spleen")).to_have_attribute(
        "data-voxels", str(rows["spleen"]["voxel_count"])
    )


def test_undo_redo_and_eraser(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=22)
    sign_in_with_token(page, server)
    open_scan(page, server, labelled.id)
    page.evaluate("window.maskloop.setActive('liver')")
    page.wait_for_function("window.maskloop.state().active === 'liver'")
    base = state(page)["count"]
    z = page.evaluate("window.maskloop.crosshair()")[2]
    liver = server.mask(labelled.head, "liver")
    ys, xs = np.nonzero(liver[:, :, z].T)
    cx, cy = int(np.median(xs)), int(np.median(ys))
    page.keyboard.press("b")
    page.evaluate("window.maskloop.setBrush(6)")
    outside = [client_point(page, [x, 70, z]) for x in (40, 48, 56)]
    mouse_stroke(page, outside)
    page.wait_for_function("(b) => window.maskloop.state().count > b", arg=base)
    painted = state(page)["count"]
    page.keyboard.press("Control+z")
    page.wait_for_function("(b) => window.maskloop.state().count === b", arg=base)
    assert state(page)["dirty"] == [] and state(page)["redo"] == 1
    page.get_by_test_id("redo").click()
    page.wait_for_function("(p) => window.maskloop.state().count === p", arg=painted)
    page.get_by_test_id("undo").click()
    page.wait_for_function("(b) => window.maskloop.state().count === b", arg=base)
    page.keyboard.press("Control+y")
    page.wait_for_function("(p) => window.maskloop.state().count === p", arg=painted)
    # Eraser across the liver: only liver voxels go.
    page.keyboard.press("e")
    assert state(page)["undo"] == 1
    mouse_stroke(page, [client_point(page, [cx, cy + d, z]) for d in (-4, 0, 4)])
    page.wait_for_function("(p) => window.maskloop.state().count < p", arg=painted)
    edit = changed_voxels(page, "liver")
    assert edit["added"] and edit["removed"]
    assert all(liver[v] for v in edit["removed"])
    assert not any(liver[v] for v in edit["added"])
    page.keyboard.press("Control+s")
    page.get_by_test_id("save-message").fill("eraser and brush")
    page.get_by_test_id("save-confirm").click()
    page.wait_for_function("(h) => window.maskloop.state().baseVersionId !== h", arg=labelled.head)
    new_id = state(page)["baseVersionId"]
    diff = mask_diff(liver, server.mask(new_id, "liver"))
    assert diff == edit
    unchanged_except(server, labelled.head, new_id, {"liver"})


def force_release_lease(server: Server, scan_id: int) -> None:
    """A lead takes back a scan's edit lease (the review workflow refuses saves under someone else's lease)."""
    httpx.delete(f"{server.base}/api/scans/{scan_id}/lease", headers=server.headers(LEAD)).raise_for_status()


def test_conflict_rebase_and_branch_keep_both_edits(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=23)
    sign_in_with_token(page, server)
    open_scan(page, server, labelled.id)
    page.evaluate("window.maskloop.setActive('liver')")
    page.wait_for_function("window.maskloop.state().active === 'liver'")
    mine = [[i, j, 30] for i in range(10, 14) for j in range(10, 13)]
    page.evaluate("(v) => window.maskloop.paintNative('liver', v, 1)", mine)
    # Meanwhile the lead saves a spleen correction and a liver change elsewhere on the same head (first taking
    # back the edit lease the annotator's edit took: the workflow refuses saves under someone else's lease).
    theirs_box = np.ones((3, 3, 2), dtype=bool)
    force_release_lease(server, labelled.id)
    theirs = server.patch(
        labelled.id,
        labelled.head,
        [("liver", (80, 80, 5), theirs_box), ("spleen", (2, 2, 2), theirs_box)],
        message="lead fixes the spleen",
    )
    page.get_by_test_id("save").click()
    page.get_by_test_id("save-message").fill("my liver edit")
    page.get_by_test_id("save-confirm").click()
    dialog = page.get_by_test_id("conflict-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Demo Lead")
    expect(dialog).to_contain_text("lead fixes the spleen")
    expect(page.get_by_test_id("save-status")).to_have_attribute("data-state", "conflict")
    screenshot(page, "conflict")
    page.get_by_test_id("conflict-rebase").click()
    page.wait_for_function(
        "(t) => { const s = window.maskloop.state(); return s.saveState === 'saved' && s.baseVersionId > t }",
        arg=theirs,
    )
    rebased = state(page)["baseVersionId"]
    version = server.get(f"/api/versions/{rebased}")
    assert version["parent_id"] == theirs and version["is_head"] and version["message"] == "my liver edit"
    liver = server.mask(rebased, "liver")
    assert all(liver[tuple(v)] for v in mine), "my edit survived the rebase"
    assert liver[80:83, 80:83, 5:7].all(), "their liver edit survived the rebase"
    assert server.mask(rebased, "spleen")[2:5, 2:5, 2:4].all(), "their spleen edit survived the rebase"
    # Second conflict, resolved as a branch: the head keeps their version, the branch holds mine.
    mine2 = [[i, 20, 31] for i in range(40, 46)]
    page.evaluate("(v) => window.maskloop.paintNative('liver', v, 1)", mine2)
    force_release_lease(server, labelled.id)
    theirs2 = server.patch(labelled.id, rebased, [("aorta", (30, 30, 30), theirs_box)], message="lead widens the aorta")
    page.get_by_test_id("save").click()
    page.get_by_test_id("save-message").fill("my branch")
    page.get_by_test_id("save-confirm").click()
    expect(page.get_by_test_id("conflict-dialog")).to_contain_text("lead widens the aorta")
    page.get_by_test_id("conflict-branch").click()
    page.wait_for_function("(t) => window.maskloop.state().baseVersionId > t", arg=theirs2)
    branch_id = state(page)["baseVersionId"]
    branch = server.get(f"/api/versions/{branch_id}")
    assert branch["is_branch"] and branch["parent_id"] == rebased and not branch["is_head"]
    assert state(page)["branch"] is True
    assert server.get(f"/api/scans/{labelled.id}")["head_version_id"] == theirs2
    assert all(server.mask(branch_id, "liver")[tuple(v)] for v in mine2)
    assert server.mask(theirs2, "aorta")[30:33, 30:33, 30:32].all()
    expect(page.get_by_test_id("mode-banner")).to_contain_text("branch")


def test_draft_survives_reload_from_server_and_from_the_browser(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=24)
    sign_in_with_token(page, server)
    open_scan(page, server, labelled.id)
    page.evaluate("window.maskloop.setActive('pancreas')")
    page.wait_for_function("window.maskloop.state().active === 'pancreas'")
    voxels = [[i, j, 20] for i in range(20, 26) for j in range(20, 24)]
    page.evaluate("(v) => window.maskloop.paintNative('pancreas', v, 1)", voxels)
    edited = state(page)["count"]
    expect(page.get_by_test_id("draft-status")).to_have_attribute("data-saved", "server")
    draft = server.get(f"/api/scans/{labelled.id}/draft")
    assert draft["base_version_id"] == labelled.head and draft["base_is_head"]
    assert set(draft["payload"]["structures"]) == {"pancreas"}
    # A reload (or a crash): the draft is offered and restored.
    page.reload()
    expect(page.get_by_test_id("draft-dialog")).to_contain_text("pancreas")
    page.get_by_test_id("draft-restore").click()
    wait_ready(page)
    st = state(page)
    assert st["dirty"] == ["pancreas"] and st["active"] == "pancreas" and st["count"] == edited
    expect(page.get_by_test_id("save-status")).to_contain_text("Unsaved changes")
    # The browser's own copy (IndexedDB) holds it too: gone from the server, still offered.
    page.wait_for_function("window.maskloop.state().draftInfo.startsWith('Draft saved')")
    httpx.delete(f"{server.base}/api/scans/{labelled.id}/draft", headers=server.headers()).raise_for_status()
    page.reload()
    expect(page.get_by_test_id("draft-dialog")).to_contain_text("this browser")
    page.get_by_test_id("draft-restore").click()
    wait_ready(page)
    assert state(page)["count"] == edited
    new_id = save_with_dialog(page, "pancreas from a draft")
    added = mask_diff(server.mask(labelled.head, "pancreas"), server.mask(new_id, "pancreas"))["added"]
    assert {tuple(v) for v in voxels} >= added and added
    # Saved: no draft left on either side.
    assert httpx.get(f"{server.base}/api/scans/{labelled.id}/draft", headers=server.headers()).status_code == 404
    page.reload()
    wait_ready(page)
    expect(page.get_by_test_id("draft-dialog")).to_have_count(0)


def test_compare_view_reports_the_api_dice(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=25)
    box = np.zeros((12, 10, 4), dtype=bool)
    box[2:10, 2:8, :] = True
    b = server.patch(
        labelled.id, labelled.head, [("liver", (20, 30, 20), box), ("stomach", (50, 50, 22), box)], message="reader two"
    )
    api_diff = server.get(f"/api/versions/{b}/diff?against={labelled.head}")
    sign_in_with_token(page, server)
    open_scan(page, server, labelled.id)
    page.get_by_test_id("tab-versions").click()
    expect(page.get_by_test_id(f"version-{b}")).to_contain_text("reader two")
    page.get_by_test_id("compare-a").select_option(str(labelled.head))
    page.get_by_test_id("compare-b").select_option(str(b))
    page.get_by_test_id("compare-run").click()
    expect(page.get_by_test_id("diff-table")).to_be_visible()
    expect(page.get_by_test_id("mode-banner")).to_contain_text(f"#{labelled.head} → #{b}")
    checked = 0
    for row in api_diff["structures"]:
        cell = page.get_by_test_id(f"dice-{row['structure']}")
        if cell.count() == 0:
            assert row["voxels_a"] == 0 and row["voxels_b"] == 0
            continue
        shown = cell.get_attribute("data-dice")
        if row["dice"] is None:
            assert shown == ""
        else:
            assert float(shown or "nan") == pytest.approx(row["dice"], abs=1e-12)
            assert cell.inner_text() == f"{row['dice']:.4f}"
            checked += 1
    assert checked >= 10
    liver = next(r for r in api_diff["structures"] if r["structure"] == "liver")
    assert liver["dice"] < 1.0
    page.get_by_test_id("diff-row-liver").click()
    expect(page.get_by_test_id("mode-banner")).to_contain_text("liver: green added, red removed")
    screenshot(page, "compare")
    # Read-only while comparing; Esc goes back to editing.
    assert state(page)["mode"] == "compare"
    page.keyboard.press("Escape")
    page.wait_for_function("window.maskloop.state().mode === 'edit'")
    page.get_by_test_id(f"view-version-{b}").click()
    expect(page.get_by_test_id("save-status")).to_have_text(f"Read-only: version #{b}")


def expected_perm_ras(codes: str) -> list[int]:
    """NiiVue's permRAS for stored axis codes: per RAS axis, the stored axis (1-based), negative when reversed."""
    out = []
    for positive, negative in (("R", "L"), ("A", "P"), ("S", "I")):
        axis = next(i for i, c in enumerate(codes) if c in (positive, negative))
        out.append((axis + 1) * (1 if codes[axis] == positive else -1))
    return out


def test_lps_and_permuted_scans_edit_the_same_world_voxels_as_ras(page: Page, server: Server, make_scan: Any) -> None:
    """Same anatomy stored RAS, LPS and IPL: the same stroke at the same place paints the same voxels in mm."""
    results: dict[str, list[np.ndarray]] = {}
    affines: dict[str, np.ndarray] = {}
    centre_mm: np.ndarray | None = None
    stroke_mm = np.zeros(3)
    for orientation in ("RAS", "LPS", "IPL"):
        labelled: LabelledScan = make_scan(orientation, seed=26)
        affine = np.asarray(labelled.scan["affine"])
        sign_in_with_token(page, server)
        open_scan(page, server, labelled.id)
        assert state(page)["permRAS"] == expected_perm_ras(orientation)
        page.evaluate("window.maskloop.setActive('liver')")
        page.wait_for_function("window.maskloop.state().active === 'liver'")
        # The liver's centre (world mm) in this scan's stored voxels, then in NiiVue's RAS grid.
        liver = labelled.phantom.masks["liver"]
        if centre_mm is None:
            inside = np.argwhere(liver)
            nearest = inside[np.argmin(((inside - inside.mean(axis=0)) ** 2).sum(axis=1))]
            centre_mm = (affine @ [*nearest, 1.0])[:3]
            # Where the stroke goes: mid-body, in front of the spine, on the same axial slice.
            stroke_mm = (affine @ [48.0, 30.0, float(nearest[2]), 1.0])[:3]
        assert centre_mm is not None
        ijk = np.rint(np.linalg.solve(affine, [*centre_mm, 1.0])[:3]).astype(int)
        assert liver[tuple(ijk)], "the probe point lies in the liver"
        ras = page.evaluate("(v) => window.maskloop.toRAS(v)", ijk.tolist())
        page.evaluate("(v) => window.maskloop.moveTo(v)", ras)
        expect(page.get_by_test_id("readout-voxel")).to_have_text(", ".join(str(int(c)) for c in ijk))
        readout = page.get_by_test_id("readout")
        expect(readout).to_contain_text("liver")  # the loaded mask lines up with the image
        hu = int(readout.get_attribute("data-hu") or "0")
        assert 20 < hu < 110, hu
        page.keyboard.press("b")
        page.evaluate("window.maskloop.setBrush(5)")
        target = np.rint(np.linalg.solve(affine, [*stroke_mm, 1.0])[:3]).astype(int)
        x, y = client_point(page, page.evaluate("(v) => window.maskloop.toRAS(v)", target.tolist()))
        mouse_stroke(page, [(x - 30, y - 10), (x, y), (x + 30, y + 10)])
        page.wait_for_function("window.maskloop.state().dirty.includes('liver')")
        new_id = page.evaluate("window.maskloop.save('world check')")
        assert new_id
        diff = mask_diff(server.mask(labelled.head, "liver"), server.mask(new_id, "liver"))
        assert diff["added"]
        results[orientation] = [(affine @ [*v, 1.0])[:3] for v in diff["added"]]
        affines[orientation] = affine
        page.goto("about:blank")
    # Map both to the RAS scan's voxel grid (affines agree to float precision, not bit for bit).
    ras_affine = affines["RAS"]
    grid = {
        key: {tuple(np.rint(np.linalg.solve(ras_affine, [*mm, 1.0])[:3]).astype(int)) for mm in worlds}
        for key, worlds in results.items()
    }
    assert grid["RAS"] == grid["LPS"] == grid["IPL"]


def test_expired_session_keeps_the_edit_and_asks_to_sign_in(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=27)
    sign_in_with_token(page, server)
    open_scan(page, server, labelled.id)
    page.evaluate("window.maskloop.setActive('stomach')")
    page.wait_for_function("window.maskloop.state().active === 'stomach'")
    page.evaluate("(v) => window.maskloop.paintNative('stomach', v, 1)", [[60, 60, 24], [61, 60, 24]])
    # The session ended: the access token is refused and the refresh cookie is gone.
    page.evaluate("window.maskloop.corruptToken()")
    page.context.clear_cookies()
    page.evaluate("() => { window.__saved = window.maskloop.save('after sign-in') }")
    expect(page.get_by_test_id("reauth-dialog")).to_be_visible()
    assert state(page)["dirty"] == ["stomach"]
    page.get_by_test_id("reauth-password").fill(DEMO_PASSWORD)
    page.get_by_test_id("reauth-submit").click()
    new_id = page.evaluate("window.__saved")
    assert new_id and server.get(f"/api/versions/{new_id}")["message"] == "after sign-in"
    assert server.mask(new_id, "stomach")[60, 60, 24]


def test_tools_fill_outline_interpolate_and_grow_cut(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=28)
    sign_in_with_token(page, server)
    open_scan(page, server, labelled.id)
    page.evaluate("window.maskloop.setActive('celiac_artery')")
    page.wait_for_function("window.maskloop.state().active === 'celiac_artery'")
    assert state(page)["count"] == 0
    z = page.evaluate("window.maskloop.crosshair()")[2]
    # Filled outline: a closed square traced with the mouse is filled on release.
    page.keyboard.press("o")
    corners = [client_point(page, [x, y, z]) for x, y in ((30, 30), (40, 30), (40, 40), (30, 40), (30, 31))]
    mouse_stroke(page, corners)
    page.wait_for_function("window.maskloop.state().count > 0")
    filled = state(page)["count"]
    assert 100 <= filled <= 130, filled  # 11×11 voxels, outline included
    # Flood fill inside a drawn ring on another slice fills the hole; outside it refuses (not enclosed).
    ring = [[x, y, z + 2] for x in range(32, 39) for y in range(32, 39) if x in (32, 38) or y in (32, 38)]
    page.evaluate("(v) => window.maskloop.paint('celiac_artery', v, 1)", ring)
    page.evaluate("(v) => window.maskloop.moveTo(v)", [35, 35, z + 2])
    page.keyboard.press("f")
    x, y = client_point(page, [35, 35, z + 2])
    page.mouse.click(x, y)
    page.wait_for_function("(n) => window.maskloop.state().count === n", arg=filled + 49)
    # Interpolation between the two painted slices (z and z+2) fills slice z+1.
    page.keyboard.press("i")
    page.wait_for_function("(n) => window.maskloop.state().count > n", arg=filled + 49)
    added = changed_voxels(page)["added"]
    assert {v[2] for v in added} == {z, z + 1, z + 2}
    # Grow-cut from a seed in the aorta region grows along similar intensities.
    page.evaluate("window.maskloop.setActive('superior_mesenteric_artery')")
    page.wait_for_function("window.maskloop.state().active === 'superior_mesenteric_artery'")
    aorta = labelled.phantom.masks["aorta"]
    seed = [int(c) for c in np.argwhere(aorta[:, :, z])[len(np.argwhere(aorta[:, :, z])) // 2]] + [z]
    page.evaluate("(v) => window.maskloop.moveTo(v)", seed)
    page.keyboard.press("g")
    page.evaluate("window.maskloop.setBrush(3)")
    x, y = client_point(page, seed)
    page.mouse.click(x, y)
    page.wait_for_function("window.maskloop.state().count > 0")
    grown = changed_voxels(page)["added"]
    inside = sum(1 for v in grown if aorta[v])
    assert inside >= 0.7 * len(grown) and inside > 5, (inside, len(grown))


def test_attention_heat_overlay_and_next_region(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("LPS", seed=29)
    attention = np.zeros(labelled.phantom.volume.shape, dtype=bool)
    attention[10:16, 10:16, 10:13] = True  # the larger region: visited first
    attention[70:73, 60:63, 30:32] = True
    server.store_attention(labelled.id, "liver", attention)
    sign_in_with_token(page, server)
    # "My work": the scan with attention ranks first.
    page.goto(server.base + "/#/")
    expect(page.get_by_test_id("worklist")).to_be_visible()
    first = page.locator("table.worklist tbody tr").first
    expect(first).to_have_attribute("data-testid", f"scan-row-{labelled.scan['case_id']}")
    open_scan(page, server, labelled.id)
    page.get_by_test_id("tab-attention").click()
    page.get_by_test_id("attention-structure").select_option("liver")
    expect(page.get_by_test_id("attention-info")).to_contain_text("2 regions")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("n")
    expect(page.get_by_test_id("attention-info")).to_contain_text("at 1")
    i, j, k = (int(c) for c in page.get_by_test_id("readout").get_attribute("data-ijk").split(","))  # type: ignore[union-attr]
    assert attention[i, j, k] and 10 <= i < 16 and 10 <= j < 16
    page.get_by_test_id("attention-next").click()
    expect(page.get_by_test_id("attention-info")).to_contain_text("at 2")
    i, j, k = (int(c) for c in page.get_by_test_id("readout").get_attribute("data-ijk").split(","))  # type: ignore[union-attr]
    assert attention[i, j, k] and i >= 70
    screenshot(page, "attention")
    # A structure without an attention map says so.
    page.get_by_test_id("attention-structure").select_option("spleen")
    expect(page.get_by_test_id("toast").last).to_contain_text("No attention map")


def test_offline_save_keeps_the_edit_then_saves_when_back(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=30)
    sign_in_with_token(page, server)
    open_scan(page, server, labelled.id)
    page.evaluate("window.maskloop.setActive('duodenum')")
    page.wait_for_function("window.maskloop.state().active === 'duodenum'")
    page.context.set_offline(True)
    page.evaluate("(v) => window.maskloop.paintNative('duodenum', v, 1)", [[5, 5, 5], [6, 5, 5]])
    expect(page.get_by_test_id("save-status")).to_have_attribute("data-state", "offline")
    assert page.evaluate("window.maskloop.save('while offline')") is None
    expect(page.get_by_test_id("save-status")).to_contain_text("Offline")
    expect(page.get_by_test_id("draft-status")).to_contain_text("this browser")
    assert state(page)["dirty"] == ["duodenum"]
    page.context.set_offline(False)
    expect(page.get_by_test_id("save-status")).to_contain_text("Unsaved changes")
    new_id = page.evaluate("window.maskloop.save('back online')")
    assert new_id and server.mask(new_id, "duodenum")[5:7, 5, 5].all()


def test_token_is_refreshed_before_it_expires(page: Page, server: Server) -> None:
    """The page renews its in-memory access token through the refresh cookie before the token expires."""
    sign_in_with_token(page, server)
    soon = (datetime.now(UTC) + timedelta(seconds=12)).isoformat()
    issued: list[str] = []

    def shorten_first(route: Route) -> None:
        response = route.fetch()
        body = response.json()
        issued.append(body["access_token"])
        if len(issued) == 1:  # the session taken up on load "expires" in 12 s: renewed about 6 s later
            body["expires_at"] = soon
        route.fulfill(response=response, json=body)

    page.route("**/api/auth/session", shorten_first)
    page.goto(server.base + "/#/")
    expect(page.get_by_test_id("worklist")).to_be_visible()
    with page.expect_response("**/api/auth/session", timeout=15_000):
        pass
    assert len(issued) == 2 and issued[1] != issued[0]
    me = httpx.get(f"{server.base}/api/auth/me", headers={"Authorization": f"Bearer {issued[1]}"})
    assert me.status_code == 200 and me.json()["email"] == ANNOTATOR


def crosshair(page: Page) -> list[int]:
    return [int(v) for v in page.evaluate("window.maskloop.crosshair()")]


def pixels_per_voxel(page: Page, ras: list[int], plane: int) -> float:
    """Screen distance between a voxel centre and its neighbour along x (in-plane for every plane but sagittal)."""
    axis = 1 if plane == 2 else 0
    other = list(ras)
    other[axis] += 1
    a = client_point(page, ras, plane)
    b = client_point(page, other, plane)
    return float(np.hypot(a[0] - b[0], a[1] - b[1]))


def test_navigation_zoom_about_the_cursor_pan_fit_slider_and_crosshair(
    page: Page, server: Server, make_scan: Any
) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=29)
    sign_in_with_token(page, server)
    open_scan(page, server, labelled.id)
    # Scans open in Navigate: a click moves the crosshair and paints nothing.
    assert state(page)["tool"] == "navigate"
    expect(page.get_by_test_id("tool-navigate")).to_have_attribute("aria-pressed", "true")
    z = crosshair(page)[2]
    page.mouse.click(*client_point(page, [30, 60, z]))
    page.wait_for_function("(v) => window.maskloop.crosshair().join() === v.join()", arg=[30, 60, z])
    assert state(page)["dirty"] == [] and state(page)["undo"] == 0
    # Ctrl+wheel zooms about the pointer: the voxel under it stays under it.
    target = [62, 40, z]
    x, y = client_point(page, target)
    before = pixels_per_voxel(page, target, 0)
    page.mouse.move(x, y)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    page.wait_for_function("window.maskloop.state().zoom > 1.5")
    zoom = state(page)["zoom"]
    assert voxel_under(page, x, y) == target
    x2, y2 = client_point(page, target)
    assert abs(x2 - x) < 1 and abs(y2 - y) < 1, ((x, y), (x2, y2))
    assert pixels_per_voxel(page, target, 0) == pytest.approx(before * zoom, rel=0.02)
    assert crosshair(page) == [30, 60, z], "zooming does not move the crosshair"
    expect(page.get_by_test_id("zoom-level")).to_have_text(f"{round(zoom * 100)}%")
    # The keys zoom about the pointer too.
    page.keyboard.press("+")
    page.wait_for_function("(z) => window.maskloop.state().zoom > z * 1.2", arg=zoom)
    assert voxel_under(page, x, y) == target
    # Middle-drag pans: the voxel grabbed follows the pointer; nothing is painted, the crosshair stays.
    grab = (x - 40, y + 30)
    grabbed = voxel_under(page, *grab)
    page.mouse.move(*grab)
    page.mouse.down(button="middle")
    page.mouse.move(grab[0] + 60, grab[1] - 45, steps=4)
    page.mouse.up(button="middle")
    assert voxel_under(page, grab[0] + 60, grab[1] - 45) == grabbed
    assert crosshair(page) == [30, 60, z]
    # Space+drag pans with any tool (the brush does not paint).
    page.keyboard.press("b")
    page.keyboard.down(" ")
    start = (x + 20, y - 20)
    grabbed = voxel_under(page, *start)
    mouse_stroke(page, [start, (start[0] - 50, start[1] + 25)])
    page.keyboard.up(" ")
    assert voxel_under(page, start[0] - 50, start[1] + 25) == grabbed
    assert state(page)["dirty"] == [] and state(page)["undo"] == 0
    page.keyboard.press("v")
    # Fit: whole slice, no pan.
    page.keyboard.press("0")
    page.wait_for_function("window.maskloop.state().zoom === 1")
    assert state(page)["pan"] == [0, 0, 0, 1]
    assert pixels_per_voxel(page, target, 0) == pytest.approx(before, rel=0.01)
    # MPR: one zoom for every 2D view.
    page.keyboard.press("4")
    page.wait_for_function("window.maskloop.state().layout === 'multiplanar'")
    page.wait_for_timeout(200)
    ras = crosshair(page)
    cor_before = pixels_per_voxel(page, ras, 1)
    ax = client_point(page, ras, 0)
    page.mouse.move(ax[0] + 5, ax[1] + 5)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -200)
    page.keyboard.up("Control")
    page.wait_for_function("window.maskloop.state().zoom > 1.3")
    zoom = state(page)["zoom"]
    assert pixels_per_voxel(page, ras, 1) == pytest.approx(cor_before * zoom, rel=0.02)
    page.get_by_test_id("zoom-fit").click()
    page.keyboard.press("1")
    # The slice slider moves the crosshair, and follows it.
    slider = page.get_by_test_id("slice-slider")
    expect(slider).to_have_attribute("max", str(state(page)["rasDims"][2] - 1))
    slider.evaluate("(el) => { el.value = '10'; el.dispatchEvent(new Event('input', { bubbles: true })) }")
    page.wait_for_function("window.maskloop.crosshair()[2] === 10")
    expect(page.get_by_test_id("slice-label")).to_have_text(f"11/{state(page)['rasDims'][2]}")
    page.evaluate("window.maskloop.moveTo([48, 48, 20])")
    expect(slider).to_have_value("20")
    # The crosshair switch.
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("x")
    expect(page.get_by_test_id("crosshair-toggle")).not_to_be_checked()
    assert state(page)["crosshairShown"] is False
    page.get_by_test_id("crosshair-toggle").check()
    assert state(page)["crosshairShown"] is True
    screenshot(page, "navigation")


@pytest.mark.parametrize("size", [(1366, 768), (1400, 900), (1920, 1080)])
def test_layout_keeps_the_header_on_one_line_and_gives_the_image_the_room(
    page: Page, server: Server, make_scan: Any, size: tuple[int, int]
) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=30)
    page.set_viewport_size({"width": size[0], "height": size[1]})
    sign_in_with_token(page, server)
    open_scan(page, server, labelled.id)
    box = page.evaluate(
        """() => {
        const r = (el) => el.getBoundingClientRect()
        const header = document.querySelector('header.topbar')
        const shown = [...header.children].filter((c) => r(c).width > 0)
        const tops = shown.map((c) => Math.round(r(c).top + r(c).height / 2))
        const viewbar = document.querySelector('.viewbar')
        const stage = r(document.querySelector('[data-testid=viewer-stage]'))
        const canvas = r(document.querySelector('[data-testid=viewer-canvas]'))
        return {
          headerHeight: r(header).height, rows: new Set(tops).size,
          viewbarHeight: r(viewbar).height, viewbarOverflow: viewbar.scrollWidth - viewbar.clientWidth,
          stage: [stage.width, stage.height], canvas: [canvas.width, canvas.height],
          page: [document.documentElement.scrollWidth, document.documentElement.scrollHeight],
        }
    }"""
    )
    width, height = size
    assert box["headerHeight"] <= 46 and box["rows"] == 1, box
    assert box["viewbarHeight"] <= 44 and box["viewbarOverflow"] <= 1, box
    assert box["page"] == [width, height], box  # nothing spills out of the window
    assert box["stage"][0] >= 0.6 * width and box["stage"][1] >= height - 180, box
    assert box["canvas"] == box["stage"], box
    screenshot(page, f"layout-{width}x{height}")
