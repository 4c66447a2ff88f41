"""What a click request must satisfy before a worker sees it, and the small message the worker gets.

Everything a click can be refused for is checked here, in the API, before anything is queued: the scan's workflow
(approved, or another user's edit lease), the model (an interactive one with promoted weights), the structure (in
the schema and known to the model), the clicks (inside the volume, not too many) and the previous mask box. The
worker then needs no database: the message names the image and the weights by digest.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core import inference_rules
from backend.core.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from backend.imaging import chunks
from backend.models import Model, ReaderSet, ReaderSetMember, Scan, ScanTask, Structure
from backend.projects import service as projects
from backend.registry import service as registry
from backend.workflow.service.tasks import approved_error, lease_held_error, lease_live

# The architecture name of click-guided models (worker.models.interactive.ARCHITECTURE; a test keeps them equal),
# described once in the shared catalogue (backend.core.inference_rules): weights needed, fine-tuned by training jobs.
INTERACTIVE_ARCHITECTURE = "interactive"
INTERACTIVE_TRAITS = inference_rules.traits_of(INTERACTIVE_ARCHITECTURE)
# What the bundled model is registered as (flows.demo, `maskloop register-model --bundled ai-refine`); preferred
# when a project has several interactive models.
DEFAULT_MODEL_NAME = "ai-refine"
DEFAULT_MAX_CLICKS = 64  # worker.models.interactive.InteractiveConfig.max_clicks
ANSWER_ENCODING = "bits+gzip"

Index = tuple[int, int, int]


@dataclass(frozen=True)
class ModelChoice:
    """The interactive model version a request runs on, as plain data (the worker needs no database)."""

    model_id: int
    name: str
    version_id: int
    version_number: int
    weights_digest: str
    config: dict[str, Any]
    structures: tuple[str, ...]

    @property
    def max_clicks(self) -> int:
        """The most clicks this model takes in one request."""
        value = self.config.get("max_clicks", DEFAULT_MAX_CLICKS)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1

    def to_message(self) -> dict[str, Any]:
        """The model part of a worker message."""
        return {
            "name": self.name,
            "version_id": self.version_id,
            "weights_digest": self.weights_digest,
            "config": self.config,
            "structures": list(self.structures),
        }


def is_interactive(model: Model) -> bool:
    """Whether a registered model is a click-guided one."""
    return model.architecture == INTERACTIVE_ARCHITECTURE


def interactive_models(db: Session, project_id: int) -> list[Model]:
    """The project's click-guided models, oldest first."""
    query = select(Model).where(Model.project_id == project_id, Model.architecture == INTERACTIVE_ARCHITECTURE)
    return list(db.scalars(query.order_by(Model.id)))


def _choice(db: Session, model: Model) -> ModelChoice:
    """The model's promoted version with weights, or a 409 saying what is missing."""
    version = registry.promoted_version(db, model)
    if version is None:
        raise Conflict(
            f"the interactive model {model.name!r} has no promoted version; a lead adds and promotes weights "
            "(POST /api/models/{id}/versions), e.g. those of `maskloop train --interactive --phantom`",
            model=model.name,
        )
    if not version.weights_digest:
        raise Conflict(
            f"version {version.number} of the interactive model {model.name!r} has no weights; nothing was run",
            model=model.name,
            version=version.number,
        )
    return ModelChoice(
        model_id=model.id,
        name=model.name,
        version_id=version.id,
        version_number=version.number,
        weights_digest=version.weights_digest,
        config=dict(model.config),
        structures=tuple(str(s) for s in model.structures),
    )


def choose_model(db: Session, project_id: int, name: str | None) -> ModelChoice:
    """The named interactive model of the project, else its default one (see below); 404/422/409 otherwise."""
    if name:
        model = registry.get_model_by_name(db, project_id, name)
        if not is_interactive(model):
            raise InvalidInput(
                f"model {name!r} is a {model.architecture} model, not a click-guided one; name an interactive model",
                model=name,
            )
        return _choice(db, model)
    models = interactive_models(db, project_id)
    if not models:
        raise Conflict(
            "this project has no interactive model; a lead registers one (architecture 'interactive') with its "
            "weights, e.g. those of `maskloop train --interactive --phantom`"
        )
    # The one named like the bundled model, else the first registered with promoted weights: a model registered
    # later (an experiment) never takes over silently; clients name it to use it.
    named = [m for m in models if m.name == DEFAULT_MODEL_NAME]
    for model in named + models:
        version = registry.promoted_version(db, model)
        if version is not None and version.weights_digest:
            return _choice(db, model)
    return _choice(db, (named + models)[0])


def _in_open_reader_set(db: Session, scan_id: int, user_id: int) -> bool:
    found = db.scalar(
        select(ReaderSetMember.id)
        .join(ReaderSet, ReaderSet.id == ReaderSetMember.reader_set_id)
        .where(ReaderSet.scan_id == scan_id, ReaderSet.status == "open", ReaderSetMember.user_id == user_id)
        .limit(1)
    )
    return found is not None


def check_editable(db: Session, scan: Scan, user_id: int, *, branch: bool) -> None:
    """Refuse (409) a click on a scan whose labels the caller could not save: approved, or another's edit lease.

    The same rule as a label save (workflow.check_can_save), read-only: a click writes nothing, not even a task row.
    """
    task = db.get(ScanTask, scan.id)
    if task is None:
        return  # a scan without a task is new: open to every annotator
    if branch and _in_open_reader_set(db, scan.id, user_id):
        return
    if task.state == "approved":
        raise approved_error(task)
    if lease_live(task) and task.lease_user_id != user_id:
        raise lease_held_error(db, task)


def check_structure(db: Session, project_id: int, choice: ModelChoice, name: str) -> Structure:
    """The schema's structure named (or aliased) `name`, which the model must know (422 otherwise)."""
    structure = projects.find_structure(projects.structures_of(db, project_id), name)
    if structure.name not in choice.structures:
        raise InvalidInput(
            f"the interactive model {choice.name!r} does not know {structure.name!r}; "
            f"it knows {', '.join(choice.structures)}",
            structure=structure.name,
            known=list(choice.structures),
        )
    return structure


@dataclass(frozen=True)
class Clicks:
    """Checked clicks as voxel indices in storage order, the newest last."""

    positive: tuple[Index, ...]
    negative: tuple[Index, ...]

    def to_message(self) -> dict[str, list[list[int]]]:
        """The click part of a worker message."""
        return {"positive": [list(p) for p in self.positive], "negative": [list(p) for p in self.negative]}


def _click(point: Sequence[Any], shape: Sequence[int], kind: str) -> Index:
    values = list(point) if isinstance(point, list | tuple) else []
    if len(values) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise InvalidInput(f"a {kind} click must be three voxel indices [i, j, k], got {point!r}", click=point)
    if not all(np.isfinite(float(v)) for v in values):
        raise InvalidInput(f"a {kind} click must be three finite voxel indices, got {point!r}", click=point)
    index = (round(values[0]), round(values[1]), round(values[2]))
    if not all(0 <= v < n for v, n in zip(index, shape, strict=True)):
        raise InvalidInput(
            f"the {kind} click {list(index)} lies outside the volume of shape {list(shape)} (voxel indices i, j, k "
            "in the scan's storage order)",
            click=list(index),
            shape=list(shape),
        )
    return index


def check_clicks(
    shape: Sequence[int], positive: Sequence[Sequence[Any]], negative: Sequence[Sequence[Any]], limit: int
) -> Clicks:
    """Clicks inside the volume, at most `limit` of them in all (422 otherwise)."""
    count = len(positive) + len(negative)
    if count > limit:
        raise InvalidInput(
            f"{count} clicks in one request; at most {limit} are allowed (keep the newest clicks)",
            clicks=count,
            limit=limit,
        )
    return Clicks(
        positive=tuple(_click(p, shape, "positive") for p in positive),
        negative=tuple(_click(p, shape, "negative") for p in negative),
    )


@dataclass(frozen=True)
class PreviousBox:
    """The structure's current mask inside a box (voxels in NIfTI order, the patch-save box encodings)."""

    origin: Index
    size: Index
    encoding: str
    data: str  # base64
    voxels: int  # set voxels

    def to_message(self) -> dict[str, Any]:
        """The previous-mask part of a worker message."""
        return {"origin": list(self.origin), "size": list(self.size), "encoding": self.encoding, "data": self.data}


def check_previous(
    shape: Sequence[int], origin: Sequence[int], size: Sequence[int], encoding: str, data: str, max_voxels: int
) -> PreviousBox:
    """A previous mask box that fits the volume and decodes (422; 413 past `max_voxels`)."""
    box_origin: Index = (int(origin[0]), int(origin[1]), int(origin[2]))
    box_size: Index = (int(size[0]), int(size[1]), int(size[2]))
    chunks.check_box((int(shape[0]), int(shape[1]), int(shape[2])), box_origin, box_size)
    voxels = box_size[0] * box_size[1] * box_size[2]
    if voxels > max_voxels:
        raise PayloadTooLarge(f"the previous mask box of {list(box_size)} voxels exceeds the limit of {max_voxels}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"previous.data is not base64: {exc}") from exc
    mask = chunks.decode_box(raw, box_size, encoding)
    return PreviousBox(box_origin, box_size, encoding, data, int(np.count_nonzero(mask)))


def previous_from_mask(mask: np.ndarray) -> PreviousBox | None:
    """A whole-volume mask as its bounding box (None when empty): how the server sends a version's mask."""
    found = ndimage.find_objects(mask.view(np.uint8) if mask.dtype == np.bool_ else mask.astype(np.uint8))
    if not found or found[0] is None:
        return None
    s = found[0]
    origin: Index = (s[0].start, s[1].start, s[2].start)
    size: Index = (s[0].stop - s[0].start, s[1].stop - s[1].start, s[2].stop - s[2].start)
    data = base64.b64encode(chunks.encode_box(mask[s], ANSWER_ENCODING)).decode("ascii")
    return PreviousBox(origin, size, ANSWER_ENCODING, data, int(np.count_nonzero(mask[s])))


def click_message(
    scan: Scan,
    choice: ModelChoice,
    structure: str,
    clicks: Clicks,
    previous: PreviousBox | None,
    *,
    timeout_s: float,
    kind: str = "refine",
) -> dict[str, Any]:
    """The message a worker answers: ids and digests, the clicks and the previous box; no database needed."""
    now = time.time()
    return {
        "kind": kind,
        "request_id": uuid.uuid4().hex,
        "sent_at": now,
        "expires_at": now + timeout_s,
        "scan": {
            "id": scan.id,
            "case_id": scan.case_id,
            "image_digest": scan.image_digest,
            "shape": [int(v) for v in scan.shape],
        },
        "model": choice.to_message(),
        "structure": structure,
        **clicks.to_message(),
        "previous": previous.to_message() if previous is not None else None,
    }


@dataclass(frozen=True)
class ClickAnswer:
    """The structure's new mask inside a box: the browser replaces the voxels of that box with it."""

    structure: str
    origin: Index
    size: Index
    encoding: str
    data: str  # base64
    voxels: int
    model: str
    model_version_id: int
    timings: dict[str, float]

    def mask(self) -> np.ndarray:
        """The decoded box (bool, storage order)."""
        return chunks.decode_box(base64.b64decode(self.data), self.size, self.encoding)


# Error codes of a worker's reply -> the domain error the API raises (anything else is a server error).
_REFUSALS: Mapping[str, type[InvalidInput] | type[Conflict] | type[NotFound] | type[PayloadTooLarge]] = {
    "unknown_structure": InvalidInput,
    "clicks_out_of_volume": InvalidInput,
    "too_many_clicks": InvalidInput,
    "invalid_request": InvalidInput,
    "invalid_input": InvalidInput,
    "weights_missing": Conflict,
    "conflict": Conflict,
    "not_found": NotFound,
    "payload_too_large": PayloadTooLarge,
}


class WorkerFailure(RuntimeError):
    """The interactive worker failed on a request for a reason that is not the caller's (a server error)."""


def answer_of(reply: Mapping[str, Any], choice: ModelChoice, started: float) -> ClickAnswer:
    """A worker's reply as an answer, or the domain error it reports (4xx), or WorkerFailure."""
    if not reply.get("ok"):
        code, message = str(reply.get("error", "internal")), str(reply.get("message", "the worker failed"))
        refusal = _REFUSALS.get(code)
        if refusal is None:
            raise WorkerFailure(f"the interactive worker failed: {message}")
        raise refusal(message, reason=code)
    origin, size = reply["origin"], reply["size"]
    timings = {
        f"{str(k).removesuffix('_s')}_ms": round(float(v) * 1000.0, 2)
        for k, v in dict(reply.get("timings", {})).items()
    }
    timings["total_ms"] = round((time.time() - started) * 1000.0, 2)
    return ClickAnswer(
        structure=str(reply["structure"]),
        origin=(int(origin[0]), int(origin[1]), int(origin[2])),
        size=(int(size[0]), int(size[1]), int(size[2])),
        encoding=str(reply["encoding"]),
        data=str(reply["data"]),
        voxels=int(reply["voxels"]),
        model=choice.name,
        model_version_id=choice.version_id,
        timings=timings,
    )
