"""The lead pages in real Chromium: the audit log (filters by person, action, scan; URL-addressable), the
dashboard (the numbers the API returns), the evaluation report, and the refusal a non-lead gets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import ANNOTATOR, LEAD, LabelledScan, Server, screenshot, sign_in_with_token, wait_ready
from tests.factories import upload_masks

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def me(server: Server, email: str) -> dict[str, Any]:
    return dict(server.get("/api/auth/me", email))


def audit_total(server: Server, **params: Any) -> int:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return int(server.get(f"/api/projects/{server.project_id}/audit?page_size=1&{query}", LEAD)["total"])


def hash_query(page: Page) -> dict[str, str]:
    fragment = urlsplit(page.url).fragment
    query = fragment.split("?", 1)[1] if "?" in fragment else ""
    return {k: v[0] for k, v in parse_qs(query).items()}


def expect_total(page: Page, total: int) -> None:
    expect(page.get_by_test_id("audit-total")).to_have_attribute("data-total", str(total))


def test_audit_log_filters_by_action_person_and_scan(page: Page, server: Server, make_scan) -> None:  # type: ignore[no-untyped-def]
    scan: LabelledScan = make_scan()
    annotator = me(server, ANNOTATOR)
    lead = me(server, LEAD)
    # The annotator saves a corrected version on the lead's import: one label_version.create by each person.
    with server.client() as client:
        masks = {"pancreas": scan.phantom.masks["pancreas"]}
        upload_masks(
            client,  # type: ignore[arg-type]
            server.headers(ANNOTATOR),
            scan.id,
            masks,
            scan.phantom.affine,
            base_version_id=scan.head,
            kind="human",
            message="annotator fix",
        )
    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    # Leads get the navigation from the worklist.
    expect(page.get_by_test_id("nav-audit")).to_be_visible()
    page.get_by_test_id("nav-audit").click()
    expect(page.get_by_test_id("audit-table")).to_be_visible()
    everything = audit_total(server)
    assert everything >= 4
    expect_total(page, everything)
    rows = page.get_by_test_id("audit-row")
    expect(rows).to_have_count(min(everything, 50))
    # Newest first: the annotator's save is the first row, shown with the person's name and the case id.
    first = rows.first
    expect(first).to_have_attribute("data-action", "label_version.create")
    expect(first).to_contain_text("Demo Annotator")
    expect(first).to_contain_text(scan.scan["case_id"])

    # Filter by action (typed, as a lead would), then by person.
    page.get_by_test_id("audit-filter-action").fill("label_version.create")
    page.get_by_test_id("audit-filter-action").press("Enter")
    saves = audit_total(server, action="label_version.create")
    assert 2 <= saves < everything
    expect_total(page, saves)
    for action in rows.evaluate_all("rs => rs.map(r => r.dataset.action)"):
        assert action == "label_version.create"
    page.get_by_test_id("audit-filter-person").select_option(str(annotator["id"]))
    mine = audit_total(server, action="label_version.create", actor_user_id=annotator["id"])
    assert 1 <= mine < saves
    expect_total(page, mine)
    assert set(rows.evaluate_all("rs => rs.map(r => r.dataset.actor)")) == {str(annotator["id"])}
    query = hash_query(page)
    assert query["action"] == "label_version.create" and query["actor"] == str(annotator["id"]), query
    screenshot(page, "lead-audit-filtered")

    # The filtered view is addressable: a fresh load of the URL shows the same filters and rows.
    url = page.url
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    page.goto(url)
    wait_ready(page)
    expect_total(page, mine)
    expect(page.get_by_test_id("audit-filter-action")).to_have_value("label_version.create")
    expect(page.get_by_test_id("audit-filter-person")).to_have_value(str(annotator["id"]))

    # Scan filter by case id (person cleared): only this scan's events, the lead's import among them.
    page.goto(f"{server.base}/#/audit?project={server.project_id}&scan={scan.scan['case_id']}")
    wait_ready(page)
    on_scan = audit_total(server, scan_id=scan.id)
    assert on_scan >= 3  # scan.import, the lead's version, the annotator's version
    expect_total(page, on_scan)
    actors = set(rows.evaluate_all("rs => rs.map(r => r.dataset.actor)"))
    assert actors == {str(annotator["id"]), str(lead["id"])}, actors
    for text in page.get_by_test_id("audit-scan-link").all_inner_texts():
        assert text == scan.scan["case_id"]
    # A time range in the future matches nothing; an unknown case id says so.
    page.goto(f"{server.base}/#/audit?project={server.project_id}&since=2999-01-01T00:00:00.000Z")
    wait_ready(page)
    expect_total(page, 0)
    expect(page.get_by_test_id("audit-empty")).to_be_visible()
    page.goto(f"{server.base}/#/audit?project={server.project_id}&scan=NO_SUCH_CASE")
    wait_ready(page)
    expect(page.get_by_test_id("audit-scan-missing")).to_be_visible()


def test_audit_pagination(page: Page, server: Server) -> None:
    # Comments are audited: enough of them make sure the log spans several pages of 50.
    scan_id = server.get(f"/api/projects/{server.project_id}/scans?page_size=1", LEAD)["items"][0]["id"]
    with server.client() as client:
        for i in range(max(0, 101 - audit_total(server))):
            response = client.post(
                f"/api/scans/{scan_id}/comments", json={"text": f"note {i}"}, headers=server.headers(LEAD)
            )
            assert response.status_code == 201, response.text
    total = audit_total(server)
    assert total > 100
    pages = (total + 49) // 50
    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/audit?project={server.project_id}")
    wait_ready(page)
    expect_total(page, total)
    expect(page.get_by_test_id("audit-page-number")).to_have_text(f"page 1 of {pages}")
    expect(page.get_by_test_id("audit-prev")).to_be_disabled()
    rows = page.get_by_test_id("audit-row")
    first_ids = rows.evaluate_all("rs => rs.map(r => r.dataset.event)")
    assert first_ids == [
        str(e["id"]) for e in server.get(f"/api/projects/{server.project_id}/audit?page_size=50", LEAD)["items"]
    ]
    page.get_by_test_id("audit-next").click()
    expect(page.get_by_test_id("audit-page-number")).to_have_text(f"page 2 of {pages}")
    assert hash_query(page)["page"] == "2"
    second_ids = rows.evaluate_all("rs => rs.map(r => r.dataset.event)")
    api_page = server.get(f"/api/projects/{server.project_id}/audit?page=2&page_size=50", LEAD)
    assert second_ids == [str(e["id"]) for e in api_page["items"]]
    assert not set(first_ids) & set(second_ids)
    # Changing a filter goes back to page 1.
    page.get_by_test_id("audit-filter-action").fill("comment.create")
    page.get_by_test_id("audit-filter-action").press("Enter")
    expect_total(page, audit_total(server, action="comment.create"))
    assert "page" not in hash_query(page)


def test_audit_reads_tab_shows_who_opened_a_volume(page: Page, server: Server, make_scan) -> None:  # type: ignore[no-untyped-def]
    scan: LabelledScan = make_scan()
    annotator = me(server, ANNOTATOR)
    opened = httpx.get(f"{server.base}/api/scans/{scan.id}/volume", headers=server.headers(ANNOTATOR), timeout=60)
    assert opened.status_code == 200
    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/audit?project={server.project_id}&view=reads&scan={scan.scan['case_id']}")
    rows = page.get_by_test_id("audit-read-row")
    expect(rows.first).to_be_visible()
    assert rows.first.get_attribute("data-kind") == "volume"
    assert rows.first.get_attribute("data-user") == str(annotator["id"])
    page.get_by_test_id("audit-filter-kind").select_option("export")
    expect(page.get_by_test_id("audit-empty")).to_be_visible()
    assert hash_query(page)["view"] == "reads" and hash_query(page)["kind"] == "export"
    page.get_by_test_id("audit-tab-changes").click()
    expect(page.get_by_test_id("audit-table")).to_be_visible()
    assert "view" not in hash_query(page) and hash_query(page)["scan"] == scan.scan["case_id"]


def test_annotator_gets_no_lead_navigation_and_a_refusal(page: Page, server: Server) -> None:
    sign_in_with_token(page, server, ANNOTATOR)
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    expect(page.get_by_test_id("worklist")).to_be_visible()
    expect(page.get_by_test_id("nav-dashboard")).to_have_count(0)
    expect(page.get_by_test_id("nav-audit")).to_have_count(0)
    expect(page.get_by_test_id("nav-evaluations")).to_have_count(0)
    for path, what in (("audit", "audit log"), ("dashboard", "dashboard"), ("evaluations", "evaluation report")):
        page.goto(f"{server.base}/#/{path}?project={server.project_id}")
        wait_ready(page)
        refusal = page.get_by_test_id("not-allowed")
        expect(refusal).to_be_visible()
        expect(refusal).to_contain_text("Not allowed")
        expect(refusal).to_contain_text(what)
        expect(refusal).to_contain_text("annotator")
        expect(page.get_by_test_id("audit-table")).to_have_count(0)
    screenshot(page, "lead-not-allowed")
    # The API agrees: the annotator may not read the audit log.
    response = httpx.get(
        f"{server.base}/api/projects/{server.project_id}/audit", headers=server.headers(ANNOTATOR), timeout=30
    )
    assert response.status_code in (403, 404)


def act(server: Server, email: str, scan_id: int, action: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{server.base}/api/scans/{scan_id}/transitions",
        json={"action": action, **body},
        headers=server.headers(email),
        timeout=60,
    )
    assert response.status_code == 200, f"{action}: {response.text}"
    return dict(response.json())


def legend_number(page: Page, testid: str) -> int:
    return int(page.get_by_test_id(testid).locator("b").inner_text().replace(",", ""))


def table_rows(page: Page, testid: str) -> list[list[str]]:
    """A data table's body cells (text content, so a folded "Data" table reads as well)."""
    return [
        [cell.strip() for cell in row]
        for row in page.get_by_test_id(testid)
        .locator("tbody tr")
        .evaluate_all("rs => rs.map(r => [...r.cells].map(c => c.textContent))")
    ]


def test_dashboard_shows_the_api_numbers(page: Page, server: Server, make_scan) -> None:  # type: ignore[no-untyped-def]
    base = f"/api/projects/{server.project_id}/dashboard"
    before = server.get(f"{base}/summary", LEAD)
    submitted, approved, annotating = make_scan(seed=21), make_scan(seed=22), make_scan(seed=23)
    # Move the scans through the workflow as the people would.
    for scan in (submitted, approved, annotating):
        act(server, ANNOTATOR, scan.id, "start")
    for scan in (submitted, approved):
        act(server, ANNOTATOR, scan.id, "submit", version_id=scan.head)
    act(server, LEAD, approved.id, "start_review")
    review = httpx.post(
        f"{server.base}/api/scans/{approved.id}/reviews",
        json={"version_id": approved.head, "decision": "approve", "message": "fine"},
        headers=server.headers(LEAD),
        timeout=60,
    )
    assert review.status_code == 201, review.text
    activity = httpx.post(
        f"{server.base}/api/scans/{submitted.id}/activity",
        json={"active_seconds": 240},
        headers=server.headers(ANNOTATOR),
        timeout=60,
    )
    assert activity.status_code == 200, activity.text
    summary = server.get(f"{base}/summary", LEAD)
    assert summary["total_scans"] == before["total_scans"] + 3
    assert summary["by_state"]["approved"] == before["by_state"]["approved"] + 1
    assert summary["by_state"]["submitted"] == before["by_state"]["submitted"] + 1
    assert summary["by_state"]["annotating"] >= 1

    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    page.get_by_test_id("nav-dashboard").click()
    wait_ready(page)
    expect(page.get_by_test_id("dash-summary")).to_have_attribute("data-state", "ready")
    expect(page.get_by_test_id("tile-total").locator(".tile-value")).to_have_text(str(summary["total_scans"]))
    for state, count in summary["by_state"].items():
        assert legend_number(page, f"state-count-{state}") == count, state
    assert table_rows(page, "summary-table") == [[k.replace("_", " "), str(v)] for k, v in summary["by_state"].items()]
    # The stacked bar's segments carry the same numbers.
    segments = page.get_by_test_id("summary-chart").locator("rect[data-key]")
    drawn = dict(segments.evaluate_all("rs => rs.map(r => [r.dataset.key, Number(r.dataset.value)])"))
    assert drawn == {k: v for k, v in summary["by_state"].items() if v}

    # By site: one row per group with its total.
    sites = server.get(f"{base}/sites", LEAD)
    rows = table_rows(page, "site-table")
    assert [(r[0], int(r[1])) for r in rows] == [(g["key"] or "(none)", g["total"]) for g in sites["groups"]]
    # Throughput: the annotator's submissions and saves over the window.
    throughput = server.get(f"{base}/throughput?days=30", LEAD)
    person = next(p for p in throughput["people"] if p["name"] == "Demo Annotator")
    assert person["totals"]["submissions"] >= 2
    row = next(r for r in table_rows(page, "throughput-table") if r[0] == "Demo Annotator")
    assert int(row[3]) == person["totals"]["submissions"]
    assert int(row[2]) == person["totals"]["versions_saved"]
    # Editing time: the count of scans with recorded time.
    editing = server.get(f"{base}/editing-time?days=30", LEAD)
    assert editing["overall"]["count"] >= 1
    assert table_rows(page, "editing-table")[0][:2] == ["all scans", str(editing["overall"]["count"])]
    # Structures and QA findings.
    structures = server.get(f"{base}/structures?basis=head", LEAD)
    assert [r[0] for r in table_rows(page, "structures-table")] == [s["name"] for s in structures["structures"]]
    qa = server.get(f"{base}/qa", LEAD)
    expect(page.get_by_test_id("tile-qa-open").locator(".tile-value")).to_have_text(str(qa["open_findings"]))
    if qa["open_findings"]:
        by_rule = [(r[0], int(r[1])) for r in table_rows(page, "qa-by-rule")]
        assert by_rule == [(c["key"] or "—", c["count"]) for c in qa["by_rule"]]
    # Each panel rendered exactly when its endpoint answers (a failing endpoint shows its error, not a blank).
    panels = {
        "summary": "summary",
        "sites": "sites",
        "phases": "phases",
        "structures": "structures?basis=head",
        "throughput": "throughput?days=30",
        "editing-time": "editing-time?days=30",
        "turnaround": "turnaround?weeks=5",
        "agreement": "agreement?bins=10",
        "model-rounds": "model-rounds",
        "qa": "qa",
    }
    for key, path in panels.items():
        status = httpx.get(f"{server.base}{base}/{path}", headers=server.headers(LEAD), timeout=60).status_code
        card = page.get_by_test_id(f"dash-{key}")
        expect(card).to_have_attribute("data-state", "ready" if status == 200 else "error")
        if status != 200:
            expect(card.get_by_test_id("panel-error")).to_contain_text(str(status) if status >= 500 else "")
    page.set_viewport_size({"width": 1360, "height": 2400})
    screenshot(page, "lead-dashboard")


def test_reviewer_sees_dashboard_but_not_audit(page: Page, server: Server) -> None:
    sign_in_with_token(page, server, "reviewer@maskloop.local")
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    expect(page.get_by_test_id("nav-dashboard")).to_be_visible()
    expect(page.get_by_test_id("nav-audit")).to_have_count(0)
    page.get_by_test_id("nav-dashboard").click()
    wait_ready(page)
    expect(page.get_by_test_id("dash-summary")).to_have_attribute("data-state", "ready")
    # The activity window is part of the address: it survives a reload.
    page.get_by_test_id("dash-days").select_option("7")
    page.wait_for_function("location.hash.includes('days=7')")
    page.reload()
    wait_ready(page)
    expect(page.get_by_test_id("dash-days")).to_have_value("7")
    expect(page.get_by_test_id("dash-throughput")).to_have_attribute("data-state", "ready")
    page.goto(f"{server.base}/#/audit?project={server.project_id}")
    wait_ready(page)
    expect(page.get_by_test_id("not-allowed")).to_contain_text("reviewer")


def test_evaluation_report_renders_the_run(page: Page, server: Server, make_scan) -> None:  # type: ignore[no-untyped-def]
    scan: LabelledScan = make_scan(seed=31)
    # The approved (ground-truth) version differs from the import in the pancreas: half of it is removed.
    masks = {k: v for k, v in scan.phantom.masks.items() if v.any()}
    pancreas = masks["pancreas"].copy()
    cut = int(pancreas.nonzero()[0].mean())
    pancreas[:cut] = False
    masks["pancreas"] = pancreas
    with server.client() as client:
        corrected = upload_masks(
            client,  # type: ignore[arg-type]
            server.headers(LEAD),
            scan.id,
            masks,
            scan.phantom.affine,
            base_version_id=scan.head,
            kind="human",
            message="corrected pancreas",
        )
    # The lead's save started the task (and took the lease): the lead submits and approves.
    act(server, LEAD, scan.id, "submit", version_id=corrected["id"])
    act(server, LEAD, scan.id, "start_review")
    review = httpx.post(
        f"{server.base}/api/scans/{scan.id}/reviews",
        json={"version_id": corrected["id"], "decision": "approve"},
        headers=server.headers(LEAD),
        timeout=60,
    )
    assert review.status_code == 201, review.text
    created = httpx.post(
        f"{server.base}/api/projects/{server.project_id}/evaluations",
        json={"name": "browser evaluation", "version_ids": [scan.head], "split": "all"},
        headers=server.headers(LEAD),
        timeout=60,
    )
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    # Poll the (read-only) job, then read the run once.
    job = wait_for(server, f"/api/jobs/{created.json()['job_id']}")
    run = server.get(f"/api/evaluations/{run_id}", LEAD)
    assert job["status"] == "succeeded" and run["status"] == "succeeded", (job.get("error"), run["error"])
    structures = run["summary"]["structures"]
    assert structures["pancreas"]["dsc"]["mean"] < 0.95  # the import lost against the corrected pancreas

    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    page.get_by_test_id("nav-evaluations").click()
    wait_ready(page)
    expect(page.get_by_test_id(f"run-row-{run_id}")).to_contain_text("browser evaluation")
    expect(page.get_by_test_id(f"run-row-{run_id}")).to_contain_text("succeeded")
    # Runs of explicit label versions do not enter the model leaderboard.
    board = server.get(f"/api/projects/{server.project_id}/leaderboard", LEAD)
    if board["rows"]:
        assert len(table_rows(page, "leaderboard-table")) == len(board["rows"])
    else:
        expect(page.get_by_test_id("leaderboard-empty")).to_be_visible()
    screenshot(page, "lead-evaluations")
    page.get_by_test_id(f"run-link-{run_id}").click()
    wait_ready(page)
    expect(page.get_by_test_id("run-name")).to_contain_text("browser evaluation")
    expect(page.get_by_test_id("nsd-definition")).to_contain_text(run["summary"]["nsd_definition"])
    expect(page.get_by_test_id("nsd-definition")).to_contain_text("Empty masks")
    rows = table_rows(page, "structure-table")
    assert [r[0] for r in rows] == [name.replace("_", " ") for name in structures]
    for row, (name, block) in zip(rows, structures.items(), strict=True):
        assert int(row[1]) == block["pairs"], name
        assert row[2] == f"{block['dsc']['mean']:.3f}", name
        nsd = block["nsd"]["mean"]
        assert row[4] == ("—" if nsd is None else f"{nsd:.3f}"), name
    # The DSC chart draws one bar per structure with the table's value.
    drawn = (
        page.get_by_test_id("dsc-chart")
        .locator("g[data-label]")
        .evaluate_all("gs => gs.map(g => [g.dataset.label, Number(g.dataset.value)])")
    )
    assert {label: round(value, 6) for label, value in drawn} == {
        n.replace("_", " "): round(b["dsc"]["mean"], 6) for n, b in structures.items()
    }
    # Per-case distribution of the first structure: one case in total.
    counts = [int(r[2]) for r in table_rows(page, "distribution-table")]
    assert sum(counts) == 1
    # Breakdown by site lists the scan's site group.
    expect(page.get_by_test_id("breakdown-site")).to_have_count(1)
    page.set_viewport_size({"width": 1360, "height": 2200})
    screenshot(page, "lead-evaluation-report")
    # The CSV download carries the token and gives the per-case rows.
    with page.expect_download() as info:
        page.get_by_test_id("download-csv").click()
    text = Path(info.value.path()).read_text(encoding="utf-8")
    header, *lines = text.strip().splitlines()
    assert "case_id" in header and "dsc" in header
    assert len(lines) == len(structures)
    assert all(line.startswith(scan.scan["case_id"]) for line in lines)


def wait_for(server: Server, path: str, done: tuple[str, ...] = ("succeeded", "failed"), limit: float = 180) -> Any:
    deadline = time.monotonic() + limit
    while True:
        body = server.get(path, LEAD)
        if body["status"] in done or time.monotonic() > deadline:
            return body
        time.sleep(1.0)


def add_training_rounds(server: Server, model_id: int, rounds: list[dict[str, float]]) -> None:
    """Write training rounds straight into the server's database, as the training pipeline would."""
    from sqlalchemy.orm import Session

    from backend.core.db import make_engine
    from backend.registry import service as registry

    engine = make_engine(f"sqlite:///{(server.data_dir / 'maskloop.db').resolve()}")
    try:
        with Session(engine) as db:
            for i, dice in enumerate(rounds):
                registry.record_training_round(
                    db,
                    model_id=model_id,
                    train_versions=10 + i,
                    heldout_versions=3,
                    scans_revised=4 - i,
                    ai_vs_final_dice=dice,
                    heldout_new={"mean_dice": 0.8 + 0.05 * i},
                    heldout_previous={"mean_dice": 0.75 + 0.05 * i},
                    promoted=i > 0,
                )
            db.commit()
    finally:
        engine.dispose()


def test_leaderboard_and_model_rounds(page: Page, server: Server, make_scan) -> None:  # type: ignore[no-untyped-def]
    scan: LabelledScan = make_scan(seed=41)
    models = server.get(f"/api/projects/{server.project_id}/models", LEAD)
    classical = next(m for m in models if m["name"] == "classical-hu")
    # The classical pre-annotator predicts the scan; the lead then saves the ground truth on top and approves it.
    with server.client() as client:
        queued = client.post(
            f"/api/projects/{server.project_id}/preannotate",
            json={"model": "classical-hu", "scan_ids": [scan.id]},
            headers=server.headers(LEAD),
        )
        assert queued.status_code == 201, queued.text
        job = wait_for(server, f"/api/jobs/{queued.json()[0]['id']}")
        assert job["status"] == "succeeded", job
        head = server.get(f"/api/scans/{scan.id}", LEAD)["head_version_id"]
        masks = {k: v for k, v in scan.phantom.masks.items() if v.any()}
        truth = upload_masks(
            client,  # type: ignore[arg-type]
            server.headers(LEAD),
            scan.id,
            masks,
            scan.phantom.affine,
            base_version_id=head,
            kind="human",
            message="ground truth over the AI draft",
        )
    act(server, LEAD, scan.id, "submit", version_id=truth["id"])
    act(server, LEAD, scan.id, "start_review")
    review = httpx.post(
        f"{server.base}/api/scans/{scan.id}/reviews",
        json={"version_id": truth["id"], "decision": "approve"},
        headers=server.headers(LEAD),
        timeout=60,
    )
    assert review.status_code == 201, review.text
    created = httpx.post(
        f"{server.base}/api/projects/{server.project_id}/evaluations",
        json={"name": "classical on all", "model": "classical-hu", "split": "all"},
        headers=server.headers(LEAD),
        timeout=60,
    )
    assert created.status_code == 201, created.text
    job = wait_for(server, f"/api/jobs/{created.json()['job_id']}")
    run = server.get(f"/api/evaluations/{created.json()['id']}", LEAD)
    assert job["status"] == "succeeded" and run["status"] == "succeeded", (job.get("error"), run["error"])
    assert "liver" in run["summary"]["structures"], run["summary"]["structures"].keys()
    board = server.get(f"/api/projects/{server.project_id}/leaderboard?structure=liver", LEAD)
    assert board["rows"], board

    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/evaluations?project={server.project_id}")
    wait_ready(page)
    page.get_by_test_id("leaderboard-structure").select_option("liver")
    expect(page.get_by_test_id("leaderboard-chart")).to_be_visible()
    assert hash_query(page)["structure"] == "liver"
    rows = table_rows(page, "leaderboard-table")
    assert [(r[0], int(r[1]), r[2], r[4]) for r in rows] == [
        (b["structure"].replace("_", " "), b["rank"], b["model"], f"{b['dsc_mean']:.3f}") for b in board["rows"]
    ]
    screenshot(page, "lead-leaderboard")

    # AI-vs-final Dice per round on the dashboard (training rounds as the training pipeline records them).
    add_training_rounds(server, classical["id"], [{"pancreas": 0.61, "liver": 0.9}, {"pancreas": 0.74, "liver": 0.93}])
    api_rounds = server.get(f"/api/projects/{server.project_id}/dashboard/model-rounds", LEAD)
    model = next(m for m in api_rounds["models"] if m["model_id"] == classical["id"])
    page.goto(f"{server.base}/#/dashboard?project={server.project_id}")
    wait_ready(page)
    table = table_rows(page, f"model-rounds-table-{classical['id']}")
    assert len(table) == len(model["rounds"]) >= 2
    head = page.get_by_test_id(f"model-rounds-table-{classical['id']}").locator("thead th").all_text_contents()
    pancreas = head.index("pancreas")
    assert [r[pancreas] for r in table[-2:]] == ["0.610", "0.740"]
    assert [r[1] for r in table[-2:]] == [f"{x['ai_vs_final_mean']:.3f}" for x in model["rounds"][-2:]]
    # The learning curve draws one line per structure plus the mean.
    series = page.get_by_test_id(f"model-{classical['id']}").locator("g[data-series]")
    assert set(series.evaluate_all("gs => gs.map(g => g.dataset.series)")) >= {"mean", "pancreas", "liver"}
    page.set_viewport_size({"width": 1360, "height": 2400})
    screenshot(page, "lead-dashboard-rounds")
