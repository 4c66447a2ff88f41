"""Interactive AI endpoints: a click answered by a warm worker, and warming one up (HTTP only)."""

from __future__ import annotations

from fastapi import APIRouter, status

from backend.auth.dependencies import DbSession, SettingsDep
from backend.flows import interactive as flows
from backend.interactive.dependencies import require_click_access
from backend.interactive.schemas import ClickIn, ClickOut, WarmIn, WarmOut
from backend.scans.dependencies import ScanAccess

router = APIRouter(tags=["interactive"])


@router.post("/api/scans/{scan_id}/interactive", response_model=ClickOut)
def click(body: ClickIn, db: DbSession, settings: SettingsDep, access: ScanAccess = require_click_access()) -> ClickOut:
    """Refine one structure from clicks: its new mask in a box around them, to preview and later save as a patch.

    Nothing is written. 422 for a structure the model does not know, clicks outside the volume or too many; 409
    for an approved scan, another user's edit lease, or a model without promoted weights; 504 past the timeout.
    """
    previous = body.previous
    request = flows.ClickRequest(
        structure=body.structure,
        positive=body.positive,
        negative=body.negative,
        model=body.model,
        previous=flows.PreviousIn(previous.origin, previous.size, previous.encoding, previous.data)
        if previous is not None
        else None,
        branch=body.branch,
    )
    answer = flows.refine(db, settings, access.scan, request, actor=access.user)
    return ClickOut(
        structure=answer.structure,
        origin=list(answer.origin),
        size=list(answer.size),
        encoding=answer.encoding,
        data=answer.data,
        voxels=answer.voxels,
        model=answer.model,
        model_version_id=answer.model_version_id,
        timings=answer.timings,
    )


@router.post("/api/scans/{scan_id}/interactive/warm", response_model=WarmOut, status_code=status.HTTP_202_ACCEPTED)
def warm(
    db: DbSession, settings: SettingsDep, body: WarmIn | None = None, access: ScanAccess = require_click_access()
) -> WarmOut:
    """Have a worker load the model and this scan's volume now (the editor calls it when the tool is picked)."""
    choice = flows.warm(db, settings, access.scan, (body or WarmIn()).model)
    return WarmOut(
        model=choice.name,
        model_version_id=choice.version_id,
        structures=list(choice.structures),
        max_clicks=choice.max_clicks,
    )
