"""The models page: a lead reads each version's validation (an interactive model's clicks-to-Dice curves), promotes
a version, rolls back to an earlier one (a reason required) and sees the decisions listed; a promotion the gate
refuses shows each structure's old and new Dice from the 409."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import LEAD, Server, screenshot, sign_in_with_token, wait_ready

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
