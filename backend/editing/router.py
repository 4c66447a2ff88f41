"""Editor operation endpoint: POST /api/scans/{scan_id}/operations computes a preview box; it never saves."""

from __future__ import annotations

import base64
import gzip
import json
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.datastructures import UploadFile as StarletteUploadFile

from backend.auth.dependencies import Blobs, DbSession, SettingsDep
from backend.core import uploads
from backend.core.errors import InvalidInput
from backend.editing import service
from backend.editing.dependencies import ScanAccess, require_editing
from backend.editing.schemas import (
    MAX_INPUTS,
    OperationRequest,
    OperationResult,
    OperationStatistics,
    StructureStatistics,
)
from backend.imaging import chunks

router = APIRouter(tags=["editing"])

_COMPONENTS = "#/components/schemas/{model}"
_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["meta"],
                "properties": {"meta": {"$ref": _COMPONENTS.format(model="OperationRequest")}},
                "additionalProperties": {
                    "type": "string",
                    "format": "binary",
                    "description": "one part per non-empty input box, named as that input's `part`",
                },
            },
            "encoding": {"meta": {"contentType": "application/json"}},
        }
    },
}


@router.post(
    "/api/scans/{scan_id}/operations",
    response_model=OperationResult,
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def run_operation(
    request: Request,
    response: Response,
    db: DbSession,
    blobs: Blobs,
    settings: SettingsDep,
    access: ScanAccess = require_editing(),
) -> OperationResult:
    """Run an editor operation (interpolate, margin, islands, smooth, fill_holes, logical, scissors, statistics)
    on the caller's current masks sent as boxes, and answer the target's new voxels on the changed box: a preview
    the editor applies as an undoable edit and saves later as a patch. Nothing is saved here. The
    `Server-Timing` header gives the time spent reading the boxes, computing and encoding (`op;dur=<ms>`)."""
    # Parsed only now, after the access dependency; the guard middleware bounds the whole body while it streams.
    form = await request.form(max_files=MAX_INPUTS, max_fields=4)
    try:
        meta = _meta(form)
        started = time.perf_counter()
        result = await run_in_threadpool(_run, db, blobs, settings, access, meta, form)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        response.headers["Server-Timing"] = f'op;dur={elapsed_ms:.1f};desc="{meta.root.operation}"'
        return result
    finally:
        await form.close()


def _meta(form: FormData) -> OperationRequest:
    """The validated `meta` field; a FastAPI-style 422 (errors under body.meta) when it does not validate."""
    field = form.get("meta")
    if not isinstance(field, str):
        raise InvalidInput("an operation needs a 'meta' field holding the OperationRequest JSON")
    try:
        return OperationRequest.model_validate(json.loads(field))
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"operation meta is not valid JSON: {exc.msg}") from exc
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", "meta", *e["loc"][1:])} for e in uploads.body_errors(exc)]
        raise RequestValidationError(errors) from exc


def _parts(meta: OperationRequest, form: FormData, limit: int) -> dict[str, bytes]:
    """The bytes of every part the inputs name (each read within the upload limit)."""
    parts: dict[str, bytes] = {}
    for item in meta.root.inputs:
        if item.part is None or item.part in parts:
            continue
        upload = form.get(item.part)
        if not isinstance(upload, StarletteUploadFile):
            raise InvalidInput(f"input part {item.part!r} (structure {item.structure!r}) is missing from the upload")
        parts[item.part] = uploads.read_limited(upload, limit)
    return parts


def _run(
    db: DbSession, blobs: Blobs, settings: SettingsDep, access: ScanAccess, meta: OperationRequest, form: FormData
) -> OperationResult:
    parts = _parts(meta, form, settings.max_upload_bytes)
    outcome = service.run(db, blobs, access.scan, meta.root, parts, max_voxels=settings.max_patch_voxels)
    stats = None
    if outcome.stats is not None:
        stats = OperationStatistics(
            structures=[StructureStatistics(structure=name, **vars(m)) for name, m in outcome.stats]
        )
    result = OperationResult(
        structure=outcome.structure,
        origin=[0, 0, 0],
        size=[0, 0, 0],
        data="",
        added=0,
        removed=0,
        summary=outcome.summary,
        stats=stats,
    )
    change = outcome.change
    if change is not None:
        result.added, result.removed = change.added, change.removed
        if change.box.size:
            result.origin, result.size = list(change.origin), list(change.box.shape)
            result.data = base64.b64encode(_encode(change.box)).decode("ascii")
    return result


def _encode(box: np.ndarray) -> bytes:
    """A result box as "bits+gzip" (the patch box format); gzip level 1: the preview is on the critical path of
    the Apply click and level 6 saves little on bit-packed masks."""
    return gzip.compress(chunks.encode_box(box, "bits"), compresslevel=1)


def install_openapi_models(app: FastAPI) -> None:
    """Add the models of the multipart `meta` field (OperationRequest and its parts) to the app's OpenAPI
    components: FastAPI lists only the models of parameters it parses itself."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        components = document.setdefault("components", {}).setdefault("schemas", {})
        if "OperationRequest" not in components:
            _keys, found = models_json_schema([(OperationRequest, "validation")], ref_template=_COMPONENTS)
            for name, schema in found.get("$defs", {}).items():
                components.setdefault(name, schema)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
