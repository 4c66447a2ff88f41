"""The review workflow in real Chromium: annotate → submit → request changes with a pinned comment → fix →
resubmit → approve (then read-only), state checked through the API at each step; viewers read-only; someone
else's edit lease locks the workspace; the first save of a scan without versions; the graded attention heat; two
review levels (junior, senior) approved by two different reviewers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page, expect

from backend.cli import DEMO_PASSWORD
from backend.imaging.phantom import generate_phantom
from tests.browser.conftest import (
    ANNOTATOR,
    LEAD,
    SHAPE,
    SPACING,
    LabelledScan,
    Server,
    open_scan,
    screenshot,
    sign_in_with_token,
    state,
    wait_ready,
)
from tests.factories import post_patch, upload_scan

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REVIEWER = "reviewer@maskloop.local"
VIEWER = "viewer@maskloop.local"


def token(server: Server, email: str) -> dict[str, str]:
    if email not in server.tokens:
        login = httpx.post(f"{server.base}/api/auth/login", json={"email": email, "password": DEMO_PASSWORD})
        assert login.status_code == 200, login.text
        server.tokens[email] = login.json()["access_token"]
    return server.headers(email)


def task(server: Server, scan_id: int, email: str = LEAD) -> dict[str, Any]:
    response = httpx.get(f"{server.base}/api/scans/{scan_id}/task", headers=token(server, email), timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def switch_user(page: Page, server: Server, email: str, scan_id: int) -> None:
    """Sign in as someone else (the newest init script wins) and open the scan afresh."""
    sign_in_with_token(page, server, email)
    page.goto("about:blank")
    open_scan(page, server, scan_id)


def paint_stroke(page: Page, structure: str, row: int) -> None:
    """One real brush stroke across the axial view on the active structure."""
    page.evaluate(f"window.maskloop.setActive('{structure}')")
    page.wait_for_function(f"window.maskloop.state().active === '{structure}'")
    page.evaluate("window.maskloop.setTool('brush'); window.maskloop.setBrush(6)")
    z = page.evaluate("window.maskloop.crosshair()")[2]
    points: list[tuple[float, float]] = []
    for i in (30, 42, 54):
        point = page.evaluate("([v, p]) => window.maskloop.clientPointOf(v, p)", [[i, row, z], 0])
        assert point is not None
        points.append((float(point["x"]), float(point["y"])))
    page.mouse.move(*points[0])
    page.mouse.down()
    for px, py in points[1:]:
        page.mouse.move(px, py, steps=3)
    page.mouse.up()


def save(page: Page, message: str) -> int:
    before = state(page)["baseVersionId"]
    page.get_by_test_id("save").click()
    page.get_by_test_id("save-message").fill(message)
    page.get_by_test_id("save-confirm").click()
    page.wait_for_function(
        "(b) => { const s = window.maskloop.state(); return s.saveState === 'saved' && s.baseVersionId !== b }",
        arg=before,
    )
    return int(state(page)["baseVersionId"])


def test_annotate_submit_request_changes_fix_and_approve(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=41)
    sid = labelled.id
    assert task(server, sid)["state"] == "new"
    # --- The annotator paints: the first edit starts the task and takes the edit lease.
    sign_in_with_token(page, server, ANNOTATOR)
    open_scan(page, server, sid)
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "new")
    paint_stroke(page, "spleen", 44)
    page.wait_for_function("window.maskloop.state().leaseHeld && window.maskloop.state().task.state === 'annotating'")
    api_task = task(server, sid)
    assert api_task["state"] == "annotating" and api_task["lease"]["username"] == "Demo Annotator"
    expect(page.get_by_test_id("task-lease")).to_contain_text("you hold the edit lease")
    # Active time: only seconds with input in the viewer count; reported to the server.
    assert state(page)["pendingActivity"] >= 1
    reported = page.evaluate("window.maskloop.flushActivity()")
    assert 1 <= reported <= 30
    assert task(server, sid)["active_seconds"] >= reported
    first = save(page, "spleen: first pass")
    # The project expects every structure of its schema for this test (QA's "missing" findings fire for those not
    # drawn; by default only structures the project has labelled are expected); restored at the end.
    lead = token(server, LEAD)
    schema = httpx.get(f"{server.base}/api/projects/{server.project_id}/schema", headers=lead).json()
    every = {"workflow": {"qa": {"expected_structures": [s["name"] for s in schema["structures"]]}}}
    default = {"workflow": {"qa": {"expected_structures": None}}}
    settings_url = f"{server.base}/api/projects/{server.project_id}/settings"
    assert httpx.patch(settings_url, headers=lead, json=every).status_code == 200
    try:
        _review_round_trip(page, server, labelled, first)
    finally:
        assert httpx.patch(settings_url, headers=lead, json=default).status_code == 200


def _review_round_trip(page: Page, server: Server, labelled: LabelledScan, first: int) -> None:
    """Submit, request changes with a pinned comment, fix, resubmit, approve; read-only afterwards."""
    sid = labelled.id
    page.get_by_test_id("action-submit").click()
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "submitted")
    api_task = task(server, sid)
    assert api_task["state"] == "submitted" and api_task["submitted_version_id"] == first
    assert api_task["lease"] is None
    # --- The reviewer starts the review and requests changes with a comment pinned at the crosshair.
    switch_user(page, server, REVIEWER, sid)
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "submitted")
    page.get_by_test_id("action-start_review").click()
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "in_review")
    assert task(server, sid)["state"] == "in_review"
    page.get_by_test_id("open-review").click()
    expect(page.get_by_test_id("review-form")).to_be_visible()
    # QA findings (the rules ran on submit): the reviewer resolves one and dismisses another.
    findings = httpx.get(f"{server.base}/api/scans/{sid}/findings", headers=token(server, LEAD)).json()
    open_ids = [f["id"] for f in findings if f["status"] == "open"]
    assert len(open_ids) >= 2, findings
    page.get_by_test_id(f"finding-resolve-{open_ids[0]}").click()
    expect(page.get_by_test_id(f"finding-{open_ids[0]}")).to_have_attribute("data-status", "resolved")
    page.get_by_test_id(f"finding-dismiss-{open_ids[1]}").click()
    expect(page.get_by_test_id(f"finding-{open_ids[1]}")).to_have_attribute("data-status", "dismissed")
    after = {
        f["id"]: f["status"]
        for f in httpx.get(f"{server.base}/api/scans/{sid}/findings", headers=token(server, LEAD)).json()
    }
    assert after[open_ids[0]] == "resolved" and after[open_ids[1]] == "dismissed"
    assert task(server, sid)["open_findings"] == len(open_ids) - 2
    page.evaluate("window.maskloop.setActive('spleen')")
    page.wait_for_function("window.maskloop.state().active === 'spleen'")
    pinned_ras = [40, 44, 20]
    page.evaluate("(v) => window.maskloop.moveTo(v)", pinned_ras)
    pinned = page.evaluate("(v) => window.maskloop.toNative(v)", pinned_ras)
    page.get_by_test_id("comment-text").fill("spleen edge leaks here")
    page.get_by_test_id("comment-pin").click()
    expect(page.get_by_test_id("pending-comments")).to_contain_text("spleen edge leaks here")
    page.get_by_test_id("review-message").fill("please fix the spleen edge")
    screenshot(page, "review-panel")
    page.get_by_test_id("review-request-changes").click()
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "changes_requested")
    api_task = task(server, sid)
    assert api_task["state"] == "changes_requested"
    reviews = httpx.get(f"{server.base}/api/scans/{sid}/reviews", headers=token(server, LEAD)).json()
    assert [r["decision"] for r in reviews] == ["request_changes"]
    assert reviews[0]["message"] == "please fix the spleen edge" and reviews[0]["version_id"] == first
    comments = httpx.get(f"{server.base}/api/scans/{sid}/comments", headers=token(server, LEAD)).json()
    assert len(comments) == 1
    comment = comments[0]
    assert comment["text"] == "spleen edge leaks here" and comment["structure"] == "spleen"
    assert comment["voxel"] == pinned and comment["slice_axis"] == 2 and comment["slice_index"] == pinned[2]
    assert comment["review_id"] == reviews[0]["id"]
    # --- The annotator sees the state and the comment; "go to" moves the crosshair to it.
    switch_user(page, server, ANNOTATOR, sid)
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "changes_requested")
    page.get_by_test_id("tab-review").click()
    expect(page.get_by_test_id(f"comment-{comment['id']}")).to_contain_text("spleen edge leaks here")
    expect(page.get_by_test_id("review-list")).to_contain_text("please fix the spleen edge")
    page.evaluate("window.maskloop.moveTo([10, 10, 5])")
    page.get_by_test_id(f"comment-goto-{comment['id']}").click()
    page.wait_for_function("(v) => window.maskloop.crosshair().join() === v.join()", arg=pinned_ras)
    # Switching the active structure loads its mask first, so it lands a moment after the crosshair.
    page.wait_for_function("() => window.maskloop.state().active === 'spleen'")
    assert state(page)["active"] == "spleen"
    # Fix, save, resubmit.
    paint_stroke(page, "spleen", 48)
    page.wait_for_function("window.maskloop.state().task.state === 'annotating'")
    page.get_by_test_id(f"comment-resolved-{comment['id']}").check()
    fixed = save(page, "spleen: fixed the edge")
    page.get_by_test_id("action-submit").click()
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "submitted")
    api_task = task(server, sid)
    assert api_task["state"] == "submitted" and api_task["submitted_version_id"] == fixed
    resolved = httpx.get(f"{server.base}/api/scans/{sid}/comments", headers=token(server, LEAD)).json()
    assert resolved[0]["resolved"] is True
    # --- The reviewer approves: approved, and the workspace turns read-only.
    switch_user(page, server, REVIEWER, sid)
    page.get_by_test_id("action-start_review").click()
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "in_review")
    page.get_by_test_id("open-review").click()
    page.get_by_test_id("review-message").fill("looks right now")
    page.get_by_test_id("review-approve").click()
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "approved")
    api_task = task(server, sid)
    assert api_task["state"] == "approved" and api_task["approved_version_id"] == fixed
    expect(page.get_by_test_id("save-status")).to_have_attribute("data-state", "readonly")
    expect(page.get_by_test_id("save-status")).to_contain_text("approved")
    expect(page.get_by_test_id("save")).to_be_disabled()
    expect(page.get_by_test_id("tool-brush")).to_be_disabled()
    expect(page.get_by_test_id("lock-reason")).to_contain_text("approved")
    page.get_by_test_id("tab-review").click()
    screenshot(page, "review-approved")
    # Even the annotator (who could edit before) now gets a read-only workspace; the API refuses saves too.
    switch_user(page, server, ANNOTATOR, sid)
    expect(page.get_by_test_id("save-status")).to_have_attribute("data-state", "readonly")
    expect(page.get_by_test_id("save")).to_be_disabled()
    assert page.evaluate("window.maskloop.paint('spleen', [[5, 5, 5]], 1)") == 0
    assert state(page)["dirty"] == []
    # The worklist: state filter and badges.
    page.goto(f"{server.base}/#/")
    expect(page.get_by_test_id("worklist")).to_be_visible()
    page.get_by_test_id("filter-state").select_option("approved")
    row = page.get_by_test_id(f"scan-row-{labelled.scan['case_id']}")
    expect(row).to_be_visible()
    expect(page.get_by_test_id(f"state-{sid}")).to_have_attribute("data-state", "approved")
    expect(page.locator("table.worklist tbody tr:not([data-state='approved'])")).to_have_count(0)
    page.get_by_test_id("filter-state").select_option("")
    # A lead reopens it: editable again.
    switch_user(page, server, LEAD, sid)
    expect(page.get_by_test_id("save-status")).to_have_attribute("data-state", "readonly")
    page.get_by_test_id("action-reopen").click()
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "annotating")
    expect(page.get_by_test_id("save-status")).to_have_attribute("data-state", "saved")
    expect(page.get_by_test_id("save")).to_be_enabled()
    assert task(server, sid)["state"] == "annotating"


def test_viewer_gets_a_read_only_workspace(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=42)
    project = next(p for p in httpx.get(f"{server.base}/api/projects", headers=token(server, LEAD)).json())
    env = {**os.environ, "MASKLOOP_DATA_DIR": str(server.data_dir)}
    env.pop("MASKLOOP_DATABASE_URL", None)
    command = [str(Path(sys.executable).parent / "maskloop"), "create-user", VIEWER, "--password", DEMO_PASSWORD]
    made = subprocess.run(
        [*command, "--name", "Demo Viewer", "--project", project["slug"], "--role", "viewer"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0 or "exists" in made.stdout + made.stderr, made.stdout + made.stderr
    sign_in_with_token(page, server, VIEWER)
    open_scan(page, server, labelled.id)
    assert state(page)["role"] == "viewer"
    expect(page.get_by_test_id("save-status")).to_have_attribute("data-state", "readonly")
    expect(page.get_by_test_id("save-status")).to_contain_text("viewer")
    expect(page.get_by_test_id("lock-reason")).to_contain_text("viewer")
    expect(page.get_by_test_id("save")).to_be_disabled()
    expect(page.get_by_test_id("tool-brush")).to_be_disabled()
    expect(page.get_by_test_id("tool-navigate")).to_be_enabled()
    # The keyboard shortcut does not bring a tool back, and a drag only navigates.
    page.keyboard.press("b")
    assert page.evaluate("window.maskloop.paint('liver', [[5, 5, 5]], 1)") == 0
    assert state(page)["dirty"] == [] and state(page)["leaseHeld"] is False
    assert task(server, labelled.id)["lease"] is None


def test_someone_elses_lease_locks_the_workspace(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=43)
    sid = labelled.id
    taken = httpx.post(f"{server.base}/api/scans/{sid}/lease", headers=token(server, LEAD))
    assert taken.status_code == 200, taken.text
    sign_in_with_token(page, server, ANNOTATOR)
    open_scan(page, server, sid)
    expect(page.get_by_test_id("save-status")).to_have_attribute("data-state", "locked")
    expect(page.get_by_test_id("save-status")).to_contain_text("Locked by Demo Lead")
    expect(page.get_by_test_id("task-lease")).to_contain_text("locked by Demo Lead")
    expect(page.get_by_test_id("lock-reason")).to_contain_text("Locked by Demo Lead")
    expect(page.get_by_test_id("save")).to_be_disabled()
    assert state(page)["access"] == "locked"
    # A drag over the view does not paint (the tool is forced to navigate); the paint hook refuses too.
    paint_stroke(page, "spleen", 44)
    assert state(page)["dirty"] == []
    assert page.evaluate("window.maskloop.paint('spleen', [[5, 5, 5]], 1)") == 0
    assert task(server, sid)["lease"]["username"] == "Demo Lead"
    # Released by the lead: after a reload the annotator may edit again.
    httpx.delete(f"{server.base}/api/scans/{sid}/lease", headers=token(server, LEAD)).raise_for_status()
    page.reload()
    wait_ready(page)
    expect(page.get_by_test_id("save-status")).to_have_attribute("data-state", "saved")
    expect(page.get_by_test_id("save")).to_be_enabled()


def test_first_save_of_a_scan_without_versions_and_graded_attention(page: Page, server: Server) -> None:
    phantom = generate_phantom(SHAPE, SPACING, seed=44, orientation="RAS")
    with server.client() as client:
        scan = upload_scan(client, token(server, LEAD), server.project_id, phantom, f"BROWSER_EMPTY_{os.getpid()}")  # type: ignore[arg-type]
    sid = int(scan["id"])
    assert scan["head_version_id"] is None
    attention = np.zeros(SHAPE, dtype=bool)
    attention[20:32, 20:32, 10:16] = True  # a dense block: bright core, fainter rim
    attention[70, 70, 30] = True  # an isolated voxel: faint
    server.store_attention(sid, "liver", attention)
    sign_in_with_token(page, server, ANNOTATOR)
    open_scan(page, server, sid)
    assert state(page)["baseVersionId"] is None
    paint_stroke(page, "spleen", 44)
    page.wait_for_function("window.maskloop.state().dirty.includes('spleen')")
    added = page.evaluate("window.maskloop.changedVoxels('spleen')")["added"]
    assert added
    page.get_by_test_id("save").click()
    expect(page.get_by_test_id("save-confirm")).to_have_text("Save first version")
    page.get_by_test_id("save-message").fill("first labels")
    page.get_by_test_id("save-confirm").click()
    page.wait_for_function("window.maskloop.state().saveState === 'saved' && window.maskloop.state().baseVersionId")
    first = int(state(page)["baseVersionId"])
    version = server.get(f"/api/versions/{first}")
    assert version["parent_id"] is None and version["is_head"] and version["kind"] == "human"
    rows = {r["name"]: r for r in version["structures"]}
    assert rows["spleen"]["status"] == "present" and rows["spleen"]["voxel_count"] == len(added)
    mask = server.mask(first, "spleen")
    assert {tuple(int(c) for c in v) for v in np.argwhere(mask)} == {tuple(v) for v in added}
    assert task(server, sid)["state"] == "annotating"
    # The heartbeat (every minute while the tab is open) renews the lease.
    before = task(server, sid)["lease"]
    assert before["username"] == "Demo Annotator"
    page.wait_for_timeout(1100)
    page.evaluate("window.maskloop.heartbeat()")
    after = task(server, sid)["lease"]
    assert after["username"] == "Demo Annotator" and after["expires_at"] > before["expires_at"]
    # Attention: a graded heat overlay (several grades), its opacity, and "next region" (largest first).
    page.get_by_test_id("tab-attention").click()
    page.get_by_test_id("attention-structure").select_option("liver")
    expect(page.get_by_test_id("attention-info")).to_contain_text("2 regions")
    att = state(page)["attention"]
    assert att["on"] and att["structure"] == "liver" and att["grades"] >= 3
    page.get_by_test_id("attention-opacity").fill("0.3")
    assert state(page)["attention"]["opacity"] == pytest.approx(0.3)
    page.get_by_test_id("attention-next").click()
    expect(page.get_by_test_id("attention-info")).to_contain_text("at 1")
    i, j, k = page.evaluate("window.maskloop.toNative(window.maskloop.crosshair())")
    assert attention[i, j, k] and 20 <= i < 32
    screenshot(page, "attention-heat")
    # Leave no high-priority map behind (other tests expect their own attention scan to rank first).
    server.store_attention(sid, "liver", np.zeros(SHAPE, dtype=bool))


def test_worklist_my_work_and_next_task(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=45)
    sid = labelled.id
    me = httpx.get(f"{server.base}/api/auth/me", headers=token(server, ANNOTATOR)).json()
    assigned = httpx.post(
        f"{server.base}/api/projects/{server.project_id}/assignments",
        json={"scan_ids": [sid], "user_id": me["id"], "role": "annotator"},
        headers=token(server, LEAD),
    )
    assert assigned.status_code == 200, assigned.text
    sign_in_with_token(page, server, ANNOTATOR)
    page.goto(f"{server.base}/#/")
    expect(page.get_by_test_id("worklist")).to_be_visible()
    page.get_by_test_id("filter-mine").check()
    expect(page.get_by_test_id(f"scan-row-{labelled.scan['case_id']}")).to_be_visible()
    expect(page.get_by_test_id(f"assignee-{sid}")).to_contain_text("Demo Annotator")
    mine = httpx.get(
        f"{server.base}/api/projects/{server.project_id}/worklist?assignee=me&page_size=500",
        headers=token(server, ANNOTATOR),
    ).json()
    assert page.locator("table.worklist tbody tr").count() == mine["total"]
    page.get_by_test_id("filter-mine").uncheck()
    # "Next task": the server picks and leases a task; the workspace opens on it.
    page.get_by_test_id("next-task").click()
    page.wait_for_url("**/#/scan/*")
    wait_ready(page)
    opened = int(page.url.rsplit("/", 1)[1])
    leased = task(server, opened)
    assert leased["lease"] is not None and leased["lease"]["user_id"] == me["id"]
    assert state(page)["leaseHeld"] is True
    # Leaving the workspace releases the lease.
    page.goto(f"{server.base}/#/")
    expect(page.get_by_test_id("worklist")).to_be_visible()
    page.wait_for_function("true")
    for _ in range(50):
        if task(server, opened)["lease"] is None:
            break
        page.wait_for_timeout(100)
    assert task(server, opened)["lease"] is None


def test_multi_reader_saves_a_branch_and_submits_the_reading(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=46)
    sid = labelled.id
    ids = {
        e: httpx.get(f"{server.base}/api/auth/me", headers=token(server, e)).json()["id"] for e in (ANNOTATOR, REVIEWER)
    }
    created = httpx.post(
        f"{server.base}/api/projects/{server.project_id}/reader-sets",
        json={"scan_ids": [sid], "readers": [ids[ANNOTATOR], ids[REVIEWER]]},
        headers=token(server, LEAD),
    )
    assert created.status_code == 201, created.text
    reader_set = created.json()[0]
    sign_in_with_token(page, server, ANNOTATOR)
    open_scan(page, server, sid)
    expect(page.get_by_test_id("mode-banner")).to_contain_text("blinded reading")
    expect(page.get_by_test_id("submit-reading")).to_be_visible()
    voxels = [[i, 30, 20] for i in range(30, 36)]
    page.evaluate("(v) => window.maskloop.paintNative('spleen', v, 1)", voxels)
    page.get_by_test_id("save").click()
    expect(page.get_by_test_id("save-confirm")).to_have_text("Save my reading")
    page.get_by_test_id("save-message").fill("my reading")
    page.get_by_test_id("save-confirm").click()
    page.wait_for_function(
        "(b) => { const s = window.maskloop.state(); return s.saveState === 'saved' && s.baseVersionId !== b }",
        arg=labelled.head,
    )
    mine = int(state(page)["baseVersionId"])
    version = server.get(f"/api/versions/{mine}")
    assert version["is_branch"] and version["parent_id"] == labelled.head and not version["is_head"]
    assert server.get(f"/api/scans/{sid}")["head_version_id"] == labelled.head, "a reading never moves the head"
    assert all(server.mask(mine, "spleen")[tuple(v)] for v in voxels)
    page.get_by_test_id("submit-reading").click()
    expect(page.get_by_test_id("submit-reading")).to_have_count(0)
    out = httpx.get(f"{server.base}/api/reader-sets/{reader_set['id']}", headers=token(server, ANNOTATOR)).json()
    me = next(m for m in out["members"] if m["user_id"] == ids[ANNOTATOR])
    assert me["submitted"] and me["version_id"] == mine
    assert out["status"] == "open", "the other reader has not submitted yet"

    # The second reader saves and submits through the API; the lead fuses (a cpu job on the embedded worker), and
    # the version panel names both readings as the fusion's inputs.
    with server.client() as client:
        reading = post_patch(
            client,  # type: ignore[arg-type]
            token(server, REVIEWER),
            sid,
            labelled.head,
            [("spleen", (30, 40, 20), np.ones((2, 2, 2), dtype=bool))],
            message="second reading",
            branch=True,
        )
    assert reading.status_code == 201, reading.text
    other = int(reading.json()["id"])
    set_url = f"{server.base}/api/reader-sets/{reader_set['id']}"
    handed = httpx.post(f"{set_url}/submit", json={"version_id": other}, headers=token(server, REVIEWER))
    assert handed.status_code == 200, handed.text
    fusing = httpx.post(f"{set_url}/fuse", json={"method": "majority"}, headers=token(server, LEAD))
    assert fusing.status_code == 202, fusing.text
    deadline = time.monotonic() + 90
    while (fused := httpx.get(set_url, headers=token(server, LEAD)).json())["fusion_version_id"] is None:
        assert time.monotonic() < deadline, fused
        time.sleep(0.5)
    switch_user(page, server, LEAD, sid)
    page.get_by_test_id("tab-versions").click()
    expect(page.get_by_test_id(f"version-{fused['fusion_version_id']}")).to_contain_text(f"fusion of #{mine}, #{other}")


SENIOR = "senior-reviewer@maskloop.local"


def create_member(server: Server, email: str, name: str, role: str) -> None:
    """A demo account in the project, made with the CLI as an operator would (idempotent)."""
    project = httpx.get(f"{server.base}/api/projects/{server.project_id}", headers=token(server, LEAD)).json()
    env = {**os.environ, "MASKLOOP_DATA_DIR": str(server.data_dir)}
    env.pop("MASKLOOP_DATABASE_URL", None)
    command = [str(Path(sys.executable).parent / "maskloop"), "create-user", email, "--password", DEMO_PASSWORD]
    made = subprocess.run(
        [*command, "--name", name, "--project", project["slug"], "--role", role],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0 or "exists" in made.stdout + made.stderr, made.stdout + made.stderr


def set_workflow(server: Server, workflow: dict[str, Any]) -> dict[str, Any]:
    response = httpx.patch(
        f"{server.base}/api/projects/{server.project_id}/settings",
        json={"workflow": workflow},
        headers=token(server, LEAD),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return dict(response.json()["settings"].get("workflow", {}))


def test_two_review_levels_need_two_reviewers(page: Page, server: Server, make_scan: Any) -> None:
    create_member(server, SENIOR, "Senior Reviewer", "reviewer")
    project = httpx.get(f"{server.base}/api/projects/{server.project_id}", headers=token(server, LEAD)).json()
    before = list(project["settings"].get("workflow", {}).get("review_levels") or ["review"])
    assert set_workflow(server, {"review_levels": ["junior", "senior"]})["review_levels"] == ["junior", "senior"]
    try:
        labelled: LabelledScan = make_scan("RAS", seed=47)
        sid = labelled.id
        # The annotator submits the labelled version.
        sign_in_with_token(page, server, ANNOTATOR)
        open_scan(page, server, sid)
        page.get_by_test_id("action-start").click()
        expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "annotating")
        page.get_by_test_id("action-submit").click()
        expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "submitted")
        assert task(server, sid)["submitted_version_id"] == labelled.head
        # Level 1 (junior): the reviewer approves; the task stays in review at level 2.
        switch_user(page, server, REVIEWER, sid)
        expect(page.get_by_test_id("task-level")).to_contain_text("1/2")
        page.get_by_test_id("action-start_review").click()
        expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "in_review")
        expect(page.get_by_test_id("task-level")).to_have_text("review 1/2 (junior)")
        page.get_by_test_id("open-review").click()
        expect(page.get_by_test_id("review-form")).to_contain_text("level 1")
        page.get_by_test_id("review-message").fill("junior: fine")
        page.get_by_test_id("review-approve").click()
        expect(page.get_by_test_id("task-level")).to_have_text("review 2/2 (senior)")
        expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "in_review")
        api_task = task(server, sid)
        assert api_task["state"] == "in_review" and api_task["review_level"] == 2
        assert api_task["approved_version_id"] is None
        # The level-1 approver may not approve level 2 as well.
        assert "approve" not in task(server, sid, REVIEWER)["allowed_actions"]
        approve = page.get_by_test_id("review-approve")
        if approve.count():
            expect(approve).to_be_disabled()
        # Level 2 (senior): a second, different reviewer approves → approved.
        switch_user(page, server, SENIOR, sid)
        expect(page.get_by_test_id("task-level")).to_have_text("review 2/2 (senior)")
        page.get_by_test_id("open-review").click()
        expect(page.get_by_test_id("review-form")).to_contain_text("level 2")
        page.get_by_test_id("review-message").fill("senior: approved")
        page.get_by_test_id("review-approve").click()
        expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "approved")
        screenshot(page, "review-two-levels")
        api_task = task(server, sid)
        assert api_task["state"] == "approved" and api_task["approved_version_id"] == labelled.head
        reviews = httpx.get(f"{server.base}/api/scans/{sid}/reviews", headers=token(server, LEAD)).json()
        assert [(r["decision"], r["review_level"], r["review_level_name"]) for r in reviews] == [
            ("approve", 1, "junior"),
            ("approve", 2, "senior"),
        ]
        assert reviews[0]["reviewer"]["id"] != reviews[1]["reviewer"]["id"]
    finally:
        assert set_workflow(server, {"review_levels": before})["review_levels"] == before


def test_read_only_after_submit_reviewer_banner_comment_steps_and_unchanged_resubmit(
    page: Page, server: Server, make_scan: Any
) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=48)
    sid = labelled.id
    # --- The annotator submits: the workspace turns visibly read-only, waiting for review.
    sign_in_with_token(page, server, ANNOTATOR)
    open_scan(page, server, sid)
    assert state(page)["tool"] == "navigate"
    page.get_by_test_id("action-start").click()
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "annotating")
    expect(page.get_by_test_id("save")).to_be_enabled()
    expect(page.get_by_test_id("review-banner")).to_be_hidden()
    page.get_by_test_id("action-submit").click()
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "submitted")
    expect(page.get_by_test_id("save-status")).to_have_attribute("data-state", "readonly")
    expect(page.get_by_test_id("save-status")).to_have_text("Submitted – waiting for review")
    expect(page.get_by_test_id("lock-reason")).to_have_text("Submitted – waiting for review")
    expect(page.get_by_test_id("save")).to_be_disabled()
    expect(page.get_by_test_id("tool-brush")).to_be_disabled()
    expect(page.get_by_test_id("interpolate")).to_be_disabled()
    expect(page.get_by_test_id("tool-navigate")).to_be_enabled()
    expect(page.get_by_test_id("review-banner")).to_have_attribute("data-kind", "waiting")
    page.keyboard.press("b")
    assert state(page)["tool"] == "navigate"
    assert page.evaluate("window.maskloop.paint('spleen', [[5, 5, 5]], 1)") == 0
    # Reopening the scan: still read-only.
    page.reload()
    wait_ready(page)
    expect(page.get_by_test_id("save-status")).to_have_attribute("data-state", "readonly")
    expect(page.get_by_test_id("save")).to_be_disabled()
    # --- The reviewer requests changes with two comments at two places.
    switch_user(page, server, REVIEWER, sid)
    expect(page.get_by_test_id("review-banner")).to_be_hidden()
    page.get_by_test_id("action-start_review").click()
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "in_review")
    expect(page.get_by_test_id("save")).to_be_enabled()  # the reviewer may correct
    page.get_by_test_id("open-review").click()
    places = [[40, 44, 20], [60, 50, 26]]
    for i, ras in enumerate(places):
        page.evaluate("(v) => window.maskloop.moveTo(v)", ras)
        page.get_by_test_id("comment-text").fill(f"comment {i + 1}")
        page.get_by_test_id("comment-pin").click()
    page.get_by_test_id("review-message").fill("the spleen edge needs another pass")
    page.get_by_test_id("review-request-changes").click()
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "changes_requested")
    expect(page.get_by_test_id("review-banner")).to_be_hidden()  # not for the reviewer who wrote it
    # --- The annotator opens the scan: the banner carries the decision and the message.
    switch_user(page, server, ANNOTATOR, sid)
    banner = page.get_by_test_id("review-banner")
    expect(banner).to_be_visible()
    expect(banner).to_have_attribute("data-kind", "request_changes")
    expect(page.get_by_test_id("review-banner-title")).to_have_text("Changes requested by Demo Reviewer")
    expect(page.get_by_test_id("review-banner-message")).to_contain_text("the spleen edge needs another pass")
    expect(page.get_by_test_id("review-banner-position")).to_have_text("2 comments")
    screenshot(page, "review-banner")
    # Stepping through the comments moves the crosshair to each in turn (and wraps).
    page.get_by_test_id("review-banner-next").click()
    page.wait_for_function("(v) => window.maskloop.crosshair().join() === v.join()", arg=places[0])
    expect(page.get_by_test_id("review-banner-position")).to_have_text("comment 1/2")
    expect(page.get_by_test_id("review-banner-comment")).to_have_text("comment 1")
    page.get_by_test_id("review-banner-next").click()
    page.wait_for_function("(v) => window.maskloop.crosshair().join() === v.join()", arg=places[1])
    expect(page.get_by_test_id("review-banner-position")).to_have_text("comment 2/2")
    page.get_by_test_id("tab-review").click()
    page.get_by_test_id("comment-next").click()
    page.wait_for_function("(v) => window.maskloop.crosshair().join() === v.join()", arg=places[0])
    page.get_by_test_id("comment-prev").click()
    page.wait_for_function("(v) => window.maskloop.crosshair().join() === v.join()", arg=places[1])
    # Resubmitting the version changes were requested on asks first; cancel keeps the task where it is.
    page.get_by_test_id("action-start").click()
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "annotating")
    expect(banner).to_be_hidden()
    page.get_by_test_id("action-submit").click()
    expect(page.get_by_test_id("resubmit-dialog")).to_be_visible()
    page.get_by_test_id("dialog-cancel").click()
    expect(page.get_by_test_id("resubmit-dialog")).to_have_count(0)
    assert task(server, sid)["state"] == "annotating"
    page.get_by_test_id("action-submit").click()
    page.get_by_test_id("resubmit-anyway").click()
    expect(page.get_by_test_id("task-state")).to_have_attribute("data-state", "submitted")
    assert task(server, sid)["state"] == "submitted"
