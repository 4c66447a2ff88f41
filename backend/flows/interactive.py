"""Interactive AI use cases: answer a click (the browser's and MONAI Label's alike), warm a worker, register the
bundled click-guided model.

A click writes nothing: its answer is a preview the client applies (and undoes) locally and later saves as an
ordinary patch. So these flows only read, and end their read transaction before waiting for the worker, so that a
click in flight holds no database connection.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from backend.core import queue
from backend.core.blobstore import BlobStore
from backend.core.config import Settings
from backend.core.db import release_transaction
from backend.core.errors import InvalidInput, ServiceUnavailable
from backend.interactive import service
from backend.labels import service as labels
from backend.models import Project, Scan, User
from backend.monailabel import service as monailabel
from backend.projects import service as projects
from backend.scans import service as scans

# A path only (the backend never imports the worker): the weights `maskloop train --interactive --phantom` writes.


@dataclass(frozen=True)
class PreviousIn:
    """The structure's current mask in a box, as the client sends it (patch-save box encodings, base64)."""

    origin: Sequence[int]
    size: Sequence[int]
    encoding: str
    data: str


@dataclass(frozen=True)
class ClickRequest:
    """One click request: the structure, every click of the session so far (newest last), the current mask."""

    structure: str
    positive: Sequence[Sequence[Any]]
    negative: Sequence[Sequence[Any]] = ()
    model: str | None = None
    previous: PreviousIn | None = None
    branch: bool = False


def _message(
    db: Session,
    settings: Settings,
    scan: Scan,
    request: ClickRequest,
    actor: User,
    *,
    previous: service.PreviousBox | None = None,
) -> tuple[service.ModelChoice, dict[str, Any]]:
    """Every check a click must pass, then its worker message (nothing is queued yet); `previous` is the
    server's own copy of the current mask when the request carries none (MONAI Label)."""
    service.check_editable(db, scan, actor.id, branch=request.branch)
    choice = service.choose_model(db, scan.project_id, request.model)
    structure = service.check_structure(db, scan.project_id, choice, request.structure)
    shape = scans.geometry_of(scan).shape
    limit = min(settings.interactive_max_clicks, choice.max_clicks)
    clicks = service.check_clicks(shape, request.positive, request.negative, limit)
    if request.previous is not None:
        given = request.previous
        previous = service.check_previous(
            shape, given.origin, given.size, given.encoding, given.data, settings.max_patch_voxels
        )
    if not clicks.positive and (previous is None or previous.voxels == 0):
        raise InvalidInput(
            "give at least one positive click, or the structure's current mask (previous) with negative clicks"
        )
    message = service.click_message(
        scan, choice, structure.name, clicks, previous, timeout_s=settings.interactive_timeout_s
    )
    return choice, message


def refine(
    db: Session,
    settings: Settings,
    scan: Scan,
    request: ClickRequest,
    *,
    actor: User,
) -> service.ClickAnswer:
    """The structure's new mask in the region around the clicks, from a warm worker (nothing is written)."""
    started = time.time()
    choice, message = _message(db, settings, scan, request, actor)
    release_transaction(db)  # read-only: no connection is held while the worker computes
    reply = service.round_trip(message, settings)
    return service.answer_of(reply, choice, started)


def warm(db: Session, settings: Settings, scan: Scan, model_name: str | None) -> service.ModelChoice:
    """Have a worker load the model and the scan's volume now, so the first click is as fast as the next ones."""
    choice = service.choose_model(db, scan.project_id, model_name)
    message = service.click_message(
        scan, choice, "", service.Clicks((), ()), None, timeout_s=settings.interactive_timeout_s, kind="warm"
    )
    release_transaction(db)
    try:
        queue.send_interactive(message, expires_s=settings.interactive_timeout_s)
    except Exception as exc:  # kombu's OperationalError, a refused socket: nothing was queued
        raise ServiceUnavailable(f"the task queue is unreachable; nothing was warmed ({exc})") from exc
    return choice


@dataclass(frozen=True)
class RefinedLabels:
    """MONAI Label's answer to an infer with clicks: each refined structure's whole mask (base with the answer)."""

    masks: dict[str, np.ndarray]
    label_values: dict[str, int]
    model: service.ModelChoice
    timings: dict[str, float]


def monailabel_refine(
    db: Session,
    blobs: BlobStore,
    settings: Settings,
    project: Project,
    scan: Scan,
    model_name: str,
    params: dict[str, Any],
    *,
    client_id: str,
    actor: User,
) -> RefinedLabels:
    """A MONAI Label infer with clicks (DeepGrow, DeepEdit or OHIF point forms): each prompted structure refined on
    top of its mask in the version the client was given, as the browser's click on that mask would be."""
    choice = service.choose_model(db, project.id, model_name)
    schema = projects.structures_of(db, project.id)
    prompts = monailabel.click_prompts(params, schema, choice.structures)
    # The masks the clicks refine: those of the version the client was given (its next save's base), else the head.
    known, remembered = monailabel.remembered_base(db, actor, client_id, scan)
    base_id = remembered if known else scan.head_version_id
    entries = labels.entries_by_structure(labels.get_version(db, base_id) if base_id is not None else None)
    shape = scans.geometry_of(scan).shape
    by_name = {s.name: s for s in schema}
    started = time.time()
    prepared = []
    for prompt in prompts:
        structure = by_name[prompt.structure]
        entry = entries.get(structure.id)
        whole = labels.read_mask(blobs, scan, entry) if entry is not None else np.zeros(shape, dtype=bool)
        request = ClickRequest(prompt.structure, prompt.positive, prompt.negative, model=choice.name)
        _, message = _message(db, settings, scan, request, actor, previous=service.previous_from_mask(whole))
        prepared.append((prompt.structure, whole, message, structure.label_value))
    release_transaction(db)
    masks: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}
    for name, whole, message, _value in prepared:
        answer = service.answer_of(service.round_trip(message, settings), choice, started)
        o, s = answer.origin, answer.size
        whole[o[0] : o[0] + s[0], o[1] : o[1] + s[1], o[2] : o[2] + s[2]] = answer.mask()
        masks[name] = whole
        timings = answer.timings
    return RefinedLabels(masks, {name: value for name, _w, _m, value in prepared}, choice, timings)
