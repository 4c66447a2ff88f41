"""The models page: a lead reads each version's validation (an interactive model's clicks-to-Dice curves), promotes
a version, rolls back to an earlier one (a reason required) and sees the decisions listed; a promotion the gate
refuses shows each structure's old and new Dice from the 409."""

from __future__ import annotations

import os
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import LEAD, SHAPE, SPACING, Server, screenshot, sign_in_with_token, wait_ready

pytestmark = [pytest.mark.browser]

CURVE = [0.62, 0.81, 0.88, 0.9, 0.91, 0.92, 0.92, 0.93, 0.93, 0.94]


def add_versions(server: Server, model_id: int) -> list[int]:
    """Three checked versions written straight into the server's database (as a training job would), and a
    training round comparing v3 with v1 whose gate regresses one structure."""
    from sqlalchemy.orm import Session

    from backend.core.blobstore import LocalBlobStore
    from backend.core.db import make_engine
    from backend.models import Model, TrainingRound
    from backend.registry import service as registry

    engine = make_engine(f"sqlite:///{(server.data_dir / 'maskloop.db').resolve()}")
    try:
        with Session(engine) as db:
            model = db.get(Model, model_id)
            assert model is not None
            blobs = LocalBlobStore(server.data_dir / "blobs")
            validation = {
                "mean_dice": 0.9,
                "clicks_to_dice_90": 4.0,
                "per_structure": {
                    "liver": {"dice_3_clicks": 0.88, "curve": CURVE},
                    "spleen": {"dice_3_clicks": 0.9, "curve": CURVE},
                },
            }
            ids = [
                registry.add_version(db, blobs, model, weights=f"weights-{i}".encode(), validation=validation).id
                for i in range(3)
            ]
            db.add(
                TrainingRound(
                    model_id=model_id,
                    new_model_version_id=ids[2],
                    previous_model_version_id=ids[0],
                    train_versions=20,
                    heldout_versions=6,
                    heldout_new={"mean_dice": 0.86, "per_structure": {"liver": 0.95, "spleen": 0.77}},
                    heldout_previous={"mean_dice": 0.84, "per_structure": {"liver": 0.85, "spleen": 0.83}},
                    decision="kept",
                )
            )
            db.commit()
            return ids
    finally:
        engine.dispose()


def create_model(server: Server) -> dict[str, Any]:
    response = httpx.post(
        f"{server.base}/api/projects/{server.project_id}/models",
        json={"name": f"ui-gate-{os.getpid()}", "architecture": "unet", "structures": ["liver", "spleen"]},
        headers=server.headers(LEAD),
        timeout=60,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_lead_promotes_and_rolls_back_from_the_models_page(page: Page, server: Server) -> None:
    model = create_model(server)
    v1, v2, v3 = add_versions(server, model["id"])
    name = model["name"]

    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    page.get_by_test_id("nav-models").click()
    card = page.get_by_test_id(f"model-{name}")
    expect(card.get_by_test_id(f"version-{v1}")).to_be_visible()
    # Validation: the mean, the per-structure table and a clicks-to-Dice chart per structure.
    card.get_by_test_id(f"validation-{v1}").locator("summary").click()
    expect(card.get_by_test_id(f"validation-{v1}")).to_contain_text("mean Dice 0.900")
    expect(card.get_by_test_id(f"click-curve-{v1}-liver").locator("circle")).to_have_count(len(CURVE))
    expect(card.get_by_test_id(f"validation-table-{v1}")).to_contain_text("0.62 0.81 0.88")

    # Nothing is promoted yet: promote v2.
    card.get_by_test_id(f"promote-{v2}").click()
    expect(card.get_by_test_id(f"promoted-{v2}")).to_be_visible()
    # v3 was trained against v1, not v2: the 409 explains, and no gate is invented.
    card.get_by_test_id(f"promote-{v3}").click()
    expect(card.get_by_test_id(f"promote-error-{name}")).to_contain_text("retrain to compare them")

    # Roll back to v1: a reason is required.
    card.get_by_test_id(f"rollback-{v1}").click()
    card.get_by_test_id(f"rollback-confirm-{name}").click()
    expect(card.get_by_test_id(f"rollback-error-{name}")).to_contain_text("needs a reason")
    card.get_by_test_id(f"rollback-reason-{name}").fill("v2 misses small livers")
    card.get_by_test_id(f"rollback-confirm-{name}").click()
    expect(card.get_by_test_id(f"promoted-{v1}")).to_be_visible()
    decisions = card.get_by_test_id(f"decisions-{name}")
    expect(decisions.locator("li[data-kind=rollback]")).to_contain_text("rollback v2 → v1")
    expect(decisions.locator("li[data-kind=rollback]")).to_contain_text("v2 misses small livers")
    expect(decisions.locator("li[data-kind=promote]")).to_contain_text("promote — → v2")

    # v3 against v1 now: the gate refuses (spleen lost 0.06 Dice) and shows each structure's old/new Dice.
    card.get_by_test_id(f"promote-{v3}").click()
    gate = card.get_by_test_id(f"refused-gate-{name}")
    expect(gate).to_have_attribute("data-passed", "false")
    expect(gate.get_by_test_id(f"refused-gate-{name}-table")).to_contain_text("0.830")
    expect(gate.get_by_test_id(f"refused-gate-{name}-table")).to_contain_text("0.770")
    expect(card.get_by_test_id(f"promoted-{v1}")).to_be_visible()

    screenshot(page, "models-page")
    listed = server.get(f"/api/models/{model['id']}/decisions", LEAD)
    assert [(d["kind"], d["to_version_id"]) for d in listed] == [("promote", v2), ("rollback", v1)]
    assert listed[-1]["reason"] == "v2 misses small livers"


# A tiny UNet on a coarse grid, so that a CPU trains and evaluates it in seconds.
TINY_STRUCTURES = ["liver", "spleen"]
TINY: dict[str, Any] = {
    "architecture": "unet",
    "structures": TINY_STRUCTURES,
    "config": {
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
        "training": {"patch_size": [32, 32, 32], "samples_per_volume": 1, "batch_size": 1},
    },
    "preprocessing": {"target_spacing": [6.6, 6.6, 6.6]},
    "inference": {"roi_size": [32, 32, 32]},
}


def _api(server: Server, method: str, path: str, status: int, **kwargs: Any) -> Any:
    response = httpx.request(method, server.base + path, headers=server.headers(LEAD), timeout=120, **kwargs)
    assert response.status_code == status, f"{method} {path}: {response.text}"
    return response.json()


def approved_version(server: Server, seed: int) -> int:
    """A scan imported with its phantom masks saved as a human version, submitted and approved: the version id."""
    from backend.imaging.nifti import to_nifti_gz
    from backend.imaging.phantom import generate_phantom

    phantom = generate_phantom(SHAPE, SPACING, seed=seed)
    case = f"TRAINPAGE_{seed}_{os.getpid()}"
    scan = _api(
        server,
        "POST",
        f"/api/projects/{server.project_id}/scans",
        201,
        files={"file": (f"{case}.nii.gz", to_nifti_gz(phantom.volume, phantom.affine), "application/gzip")},
        data={"case_id": case},
    )
    masks = {name: to_nifti_gz(phantom.masks[name].astype(np.uint8), phantom.affine) for name in TINY_STRUCTURES}
    files = [("files", (f"{name}.nii.gz", data, "application/gzip")) for name, data in masks.items()]
    body = {"kind": "human", "message": "truth"}
    version = _api(server, "POST", f"/api/scans/{scan['id']}/versions", 201, files=files, data=body)
    transitions = f"/api/scans/{scan['id']}/transitions"
    _api(server, "POST", transitions, 200, json={"action": "submit", "version_id": version["id"]})
    _api(server, "POST", transitions, 200, json={"action": "start_review"})
    review = {"version_id": version["id"], "decision": "approve"}
    _api(server, "POST", f"/api/scans/{scan['id']}/reviews", 201, json=review)
    return int(version["id"])


def tiny_model(server: Server) -> tuple[dict[str, Any], int]:
    """The tiny model registered with random weights (checked by the worker) and promoted: (model, v1 id)."""
    import torch

    from worker.models.networks import build_network
    from worker.models.training import save_weights

    torch.manual_seed(0)
    network = build_network("unet", TINY["config"], len(TINY_STRUCTURES))
    body = {"name": f"ui-train-{os.getpid()}", **TINY}
    model = _api(server, "POST", f"/api/projects/{server.project_id}/models", 201, json=body)
    files = {"weights": ("tiny.pt", save_weights(network), "application/octet-stream")}
    version = _api(server, "POST", f"/api/models/{model['id']}/versions", 201, files=files)
    _api(server, "POST", f"/api/model-versions/{version['id']}/promote", 200)
    return dict(model), int(version["id"])


def test_lead_launches_training_and_watches_the_gate_decide(page: Page, server: Server) -> None:
    versions = [approved_version(server, seed) for seed in (81, 82, 83)]
    model, v1 = tiny_model(server)
    name = model["name"]

    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/models")
    wait_ready(page)
    card = page.get_by_test_id(f"model-{name}")
    expect(card.get_by_test_id(f"promoted-{v1}")).to_be_visible()
    form = card.get_by_test_id(f"train-form-{name}")
    # The lead's mistakes are caught before anything is sent.
    form.get_by_test_id(f"train-versions-{name}").select_option("ids")
    form.get_by_test_id(f"train-ids-{name}").fill(str(versions[0]))
    form.get_by_test_id(f"train-start-{name}").click()
    expect(form.get_by_test_id(f"train-error-{name}")).to_contain_text("at least 2 approved label versions")
    # This test's three approved versions, one epoch, a third held out.
    form.get_by_test_id(f"train-ids-{name}").fill(", ".join(map(str, versions)))
    form.get_by_test_id(f"train-epochs-{name}").fill("1")
    form.get_by_test_id(f"train-heldout-{name}").fill("0.3")
    form.get_by_test_id(f"train-start-{name}").click()
    expect(form.get_by_test_id(f"train-error-{name}")).to_be_hidden()

    # The job is watched until it finished; then the round's decision and the gate's per-structure table.
    job_line = card.get_by_test_id(f"train-job-{name}")
    expect(job_line).to_have_attribute("data-status", "succeeded", timeout=240_000)
    decision = card.get_by_test_id(f"train-decision-{name}")
    expect(decision).to_contain_text("not promoted")
    gate = card.get_by_test_id(f"train-gate-{name}")
    expect(gate).to_have_attribute("data-passed", "false")
    [round_] = _api(server, "GET", f"/api/models/{model['id']}/rounds", 200)
    assert round_["promoted"] is False and round_["heldout_versions"] == 1, round_
    expect(decision).to_have_attribute("data-decision", round_["decision"])
    # One row per structure with the promoted version's and the candidate's held-out Dice, as the round holds them.
    rows = gate.get_by_test_id(f"train-gate-{name}-table").locator("tbody tr")
    expect(rows).to_have_count(2)
    for row, entry in zip(rows.all(), round_["gate"]["structures"], strict=True):
        expect(row).to_contain_text(f"{entry['previous']:.3f}")
        expect(row).to_contain_text(f"{entry['new']:.3f}")
    # The held-out set (1 scan) is below the project's minimum: the refusal says so.
    expect(gate).to_contain_text("promotion needs at least")
    # The new version is listed (not promoted); v1 stays promoted.
    new_version = round_["new_model_version_id"]
    expect(card.get_by_test_id(f"version-{new_version}")).to_be_visible()
    expect(card.get_by_test_id(f"promoted-{v1}")).to_be_visible()
    expect(card.get_by_test_id(f"promoted-{new_version}")).to_have_count(0)
    card.get_by_test_id(f"train-watch-{name}").scroll_into_view_if_needed()
    screenshot(page, "models-page-training")
