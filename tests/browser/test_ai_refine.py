"""The AI refine tool in real Chromium, answered by the real warm `interactive` Celery worker that `maskloop serve`
starts: a click inside the structure on the axial view and a Shift+click outside on the coronal view, each answer a
preview applied as one undoable edit; one undone, the rest saved as a patch, and the server's version holds exactly
the first answer applied to the base. The model is the interactive API tests' tiny random-init click-guided network
with its head biased to "foreground" (an untrained head answers "nothing" everywhere, which would change nothing):
a random answer is still an answer, and the UI must show exactly what the server answered."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page, expect

from backend.imaging import chunks
from tests.browser.conftest import (
    LEAD,
    LabelledScan,
    Server,
    open_scan,
    screenshot,
    sign_in_with_token,
    state,
)
from tests.integration.test_interactive_api import CONFIG, MODEL, inside_point, placed, register_model

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STRUCTURE = "liver"


def eager_weights() -> bytes:
    """Random-init weights of the tiny network whose head says "foreground" almost everywhere: every answer fills
    its region, so each click visibly changes the mask."""
    import torch

    from worker.models.interactive.model import InteractiveConfig, build_network
    from worker.models.training import save_weights

    torch.manual_seed(0)
    network = build_network(InteractiveConfig.from_json(CONFIG))
    head = network.head
    assert isinstance(head, torch.nn.Conv3d) and head.bias is not None
    torch.nn.init.constant_(head.bias, 4.0)
    return save_weights(network)


@pytest.fixture(scope="module")
def tiny_model(server: Server) -> str:
    """The tiny click-guided model registered and promoted in the demo project (in the server's own database)."""
    from sqlalchemy.orm import Session

    from backend.core.blobstore import LocalBlobStore
    from backend.core.db import make_engine
    from backend.core.errors import DomainError
    from backend.registry import service as registry

    engine = make_engine(f"sqlite:///{(server.data_dir / 'maskloop.db').resolve()}")
    try:
        with Session(engine) as db:
            try:
                registry.get_model_by_name(db, server.project_id, MODEL)
            except DomainError:
                register_model(
                    db, LocalBlobStore(server.data_dir / "blobs"), server.project_id, weights=eager_weights()
                )
            # The demo's bundled model (preferred when promoted) steps aside: the editor's default is the tiny one.
            for model in registry.list_models(db, server.project_id):
                if model.name != MODEL and model.architecture == "interactive":
                    for version in registry.list_versions(db, model):
                        version.is_promoted = False
            db.commit()
    finally:
        engine.dispose()
    return MODEL


def warm_worker(server: Server, scan_id: int, point: list[int]) -> None:
    """Click once through the API until the worker answers (its first click loads torch, the model, the volume)."""
    deadline = time.monotonic() + 240
    body = {"structure": STRUCTURE, "positive": [point]}
    while True:
        response = httpx.post(
            f"{server.base}/api/scans/{scan_id}/interactive", json=body, headers=server.headers(), timeout=60
        )
        if response.status_code == 200:
            return
        assert response.status_code in (503, 504) and time.monotonic() < deadline, response.text
        time.sleep(1)


def click_voxel(page: Page, ijk: list[int], plane: int, *, shift: bool = False) -> dict[str, Any]:
    """Show the stored-order voxel in its slice, click it on that plane's view (Shift: outside) and return the
    click request the page sent and the server's answer."""
    ras = page.evaluate("(v) => window.maskloop.toRAS(v)", ijk)
    page.evaluate("(v) => window.maskloop.moveTo(v)", ras)
    page.wait_for_function("(v) => window.maskloop.crosshair().join() === v.join()", arg=ras)
    point = page.evaluate("([v, p]) => window.maskloop.clientPointOf(v, p)", [ras, plane])
    assert point is not None, f"voxel {ijk} is not on screen"
    undo = state(page)["undo"]
    with page.expect_response(
        lambda r: r.url.endswith("/interactive") and r.request.method == "POST", timeout=60_000
    ) as info:
        if shift:
            page.keyboard.down("Shift")
        page.mouse.click(float(point["x"]), float(point["y"]))
        if shift:
            page.keyboard.up("Shift")
    response = info.value
    assert response.status == 200, response.text()
    page.wait_for_function("(n) => window.maskloop.state().undo === n + 1", arg=undo)
    return {"request": response.request.post_data_json, "answer": response.json()}


def mask_of_box(box: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """A whole mask from a request's `previous` box."""
    size = (box["size"][0], box["size"][1], box["size"][2])
    voxels = chunks.decode_box(base64.b64decode(box["data"]), size, box["encoding"])
    out = np.zeros(shape, dtype=bool)
    o = box["origin"]
    out[o[0] : o[0] + size[0], o[1] : o[1] + size[1], o[2] : o[2] + size[2]] = voxels
    return out


def shown_mask(page: Page, base: np.ndarray) -> np.ndarray:
    """The structure's working copy in the page (stored order): the base with the page's changed voxels."""
    changes = page.evaluate("(s) => window.maskloop.changedVoxels(s)", STRUCTURE)
    out = base.copy()
    for key, value in (("added", True), ("removed", False)):
        for i, j, k in changes[key]:
            out[int(i), int(j), int(k)] = value
    return out


def outside_point(mask: np.ndarray, start: list[int]) -> list[int]:
    """The first voxel outside the mask from `start` along +i, a few voxels further out."""
    i = start[0]
    while i < mask.shape[0] - 1 and mask[i, start[1], start[2]]:
        i += 1
    return [min(i + 3, mask.shape[0] - 1), start[1], start[2]]


def test_two_clicks_preview_undo_one_and_save(page: Page, server: Server, make_scan: Any, tiny_model: str) -> None:
    labelled: LabelledScan = make_scan("LPS", seed=61)
    base = server.mask(labelled.head, STRUCTURE)
    spleen = server.mask(labelled.head, "spleen")
    inside = inside_point(base)
    warm_worker(server, labelled.id, inside)
    sign_in_with_token(page, server)
    open_scan(page, server, labelled.id)
    page.evaluate("(n) => window.maskloop.setActive(n)", STRUCTURE)
    page.wait_for_function("(n) => window.maskloop.state().active === n", arg=STRUCTURE)
    # Picking the tool warms the model and shows the status on the stage.
    status = page.get_by_test_id("ai-refine-status")
    expect(status).to_be_hidden()
    with page.expect_response(lambda r: r.url.endswith("/interactive/warm")) as warm:
        page.get_by_test_id("tool-airefine").click()
    assert warm.value.status == 202 and warm.value.json()["model"] == tiny_model
    assert state(page)["tool"] == "airefine"
    expect(status).to_be_visible()
    expect(status).to_have_attribute("data-state", "ready")

    # Click 1: inside, on the axial view. The request carries the click and the structure's current mask.
    first = click_voxel(page, inside, 0)
    request = first["request"]
    assert request["structure"] == STRUCTURE and request["positive"] == [inside] and request["negative"] == []
    assert np.array_equal(mask_of_box(request["previous"], base.shape), base)
    answer1 = first["answer"]
    after1 = placed(answer1, base)
    assert np.array_equal(shown_mask(page, base), after1), "the page does not show the first answer"
    expect(status).to_have_attribute("data-state", "done")
    expect(status).to_have_attribute("data-clicks", "1")
    expect(page.get_by_test_id("ai-refine-text")).to_contain_text(" ms")
    assert float(status.get_attribute("data-ms") or "nan") > 0
    assert int(status.get_attribute("data-voxels") or "-1") == answer1["voxels"]

    # Click 2: Shift+click outside, on the coronal view: every click so far, and the first answer as the mask.
    page.keyboard.press("2")
    page.wait_for_function("window.maskloop.state().layout === 'coronal'")
    outside = outside_point(after1, inside)
    second = click_voxel(page, outside, 1, shift=True)
    request = second["request"]
    assert request["positive"] == [inside] and request["negative"] == [outside]
    assert np.array_equal(mask_of_box(request["previous"], base.shape), after1)
    after2 = placed(second["answer"], after1)
    assert not np.array_equal(after2, after1), "the second answer changed nothing: the test cannot tell the steps apart"
    assert np.array_equal(shown_mask(page, base), after2), "the page does not show the second answer"
    expect(status).to_have_attribute("data-clicks", "2")
    assert state(page)["undo"] == 2 and state(page)["dirty"] == [STRUCTURE]
    screenshot(page, "ai-refine-preview")

    # Undo one: the first answer is back, and its single click is the session again.
    page.get_by_test_id("undo").click()
    page.wait_for_function("window.maskloop.state().undo === 1")
    assert np.array_equal(shown_mask(page, base), after1)
    expect(status).to_have_attribute("data-clicks", "1")

    # Save (a patch like any edit): the server's version holds the first answer applied to the base, nothing else.
    page.get_by_test_id("save").click()
    page.get_by_test_id("save-message").fill("AI refine")
    page.get_by_test_id("save-confirm").click()
    page.wait_for_function("(b) => window.maskloop.state().baseVersionId !== b", arg=labelled.head)
    version = int(state(page)["baseVersionId"])
    assert np.array_equal(server.mask(version, STRUCTURE), after1)
    assert np.array_equal(server.mask(version, "spleen"), spleen)
    saved = server.get(f"/api/versions/{version}")
    assert saved["parent_id"] == labelled.head and saved["message"] == "AI refine"


def test_refusals_are_shown_locks_and_the_servers_detail(
    page: Page, server: Server, make_scan: Any, tiny_model: str
) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=62)
    pancreas = server.mask(labelled.head, "pancreas")
    sign_in_with_token(page, server)
    open_scan(page, server, labelled.id)
    # A structure the model does not know: the server's 422 detail is the status, nothing changes.
    page.evaluate("(n) => window.maskloop.setActive(n)", "pancreas")
    page.wait_for_function("window.maskloop.state().active === 'pancreas'")
    page.get_by_test_id("tool-airefine").click()
    point = inside_point(pancreas)
    ras = page.evaluate("(v) => window.maskloop.toRAS(v)", point)
    page.evaluate("(v) => window.maskloop.moveTo(v)", ras)
    page.wait_for_function("(v) => window.maskloop.crosshair().join() === v.join()", arg=ras)
    at = page.evaluate("([v, p]) => window.maskloop.clientPointOf(v, p)", [ras, 0])
    with page.expect_response(lambda r: r.url.endswith("/interactive") and r.request.method == "POST") as info:
        page.mouse.click(float(at["x"]), float(at["y"]))
    assert info.value.status == 422
    detail = info.value.json()["detail"]
    assert "does not know 'pancreas'" in detail
    status = page.get_by_test_id("ai-refine-status")
    expect(status).to_have_attribute("data-state", "error")
    expect(page.get_by_test_id("ai-refine-text")).to_have_text(detail)
    assert state(page)["undo"] == 0 and state(page)["dirty"] == []

    # Someone else's edit lease: the tool refuses with the lock shown, and the toolbar says why.
    other: LabelledScan = make_scan("RAS", seed=63)
    lease = httpx.post(f"{server.base}/api/scans/{other.id}/lease", headers=server.headers(LEAD), timeout=60)
    assert lease.status_code in (200, 201), lease.text
    open_scan(page, server, other.id)
    expect(page.get_by_test_id("lock-reason")).to_contain_text("Locked by")
    expect(page.get_by_test_id("tool-airefine")).to_be_disabled()
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press("k")
    expect(page.locator(".toast").last).to_contain_text("Locked by")
    assert state(page)["tool"] == "navigate"
    expect(page.get_by_test_id("ai-refine-status")).to_be_hidden()
