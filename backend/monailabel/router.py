"""MONAI Label-compatible endpoints under /monailabel/{project}/ (HTTP only: the rules live in flows and services)."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from backend.auth.dependencies import Blobs, CurrentUser, DbSession, SettingsDep
from backend.core.errors import GatewayTimeout, InvalidInput, NotFound
from backend.flows import accounts, reads
from backend.flows import interactive as interactive_flows
from backend.flows import monailabel as flows
from backend.interactive import service as interactive
from backend.labels import service as labels
from backend.models import Model, Scan
from backend.monailabel import service
from backend.monailabel.dependencies import require_project
from backend.monailabel.schemas import LabelParams, SampleOut, SampleRequest, TokenOut
from backend.projects.dependencies import ProjectAccess

router = APIRouter(prefix="/monailabel/{project}", tags=["monailabel"])

NIFTI_MEDIA = "application/octet-stream"
VERSION = "0.8.5"


ProjectRef = Annotated[str, Path(description="The project's slug or id", max_length=64)]


@router.get("/auth/")
def auth_enabled(project: ProjectRef) -> dict[str, bool]:
    """Authentication is always on."""
    del project  # every project signs in alike
    return {"enabled": True}


@router.post("/auth/token", response_model=TokenOut)
def auth_token(
    project: ProjectRef,
    request: Request,
    db: DbSession,
    settings: SettingsDep,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
) -> TokenOut:
    """Exchange e-mail (username) and password for a maskloop bearer token."""
    del project  # a maskloop token is not bound to one project
    client = request.client.host if request.client else "unknown"
    signed_in = accounts.sign_in(db, username, password, settings, client_address=client)
    return TokenOut(access_token=signed_in.access_token)


@router.get("/auth/token/valid")
def auth_token_valid(project: ProjectRef, _user: CurrentUser) -> dict[str, bool]:
    """200 when the bearer token is valid (401 otherwise)."""
    del project
    return {"valid": True}


@router.get("/info/")
def info(db: DbSession, access: ProjectAccess = require_project("read")) -> dict[str, Any]:
    """The app description: labels in schema order, models, strategies, datastore totals."""
    structures = service.structures(db, access.project)
    label_names = {s.name: s.label_value for s in structures}
    registered = service.models_of(db, access.project)
    models = {m.name: _model_info(m, label_names) for m in registered}
    clicks = any(interactive.is_interactive(m) for m in registered)
    total, completed = service.datastore_counts(db, access.project)
    lead = access.role in ("lead", "admin")
    return {
        "name": f"maskloop: {access.project.name}",
        "description": access.project.description or "",
        "version": VERSION,
        # DeepEdit clients send negative clicks as the points of a "background" label they take from this list.
        "labels": [s.name for s in structures] + (["background"] if clicks else []),
        "models": models,
        "trainers": {
            m.name: {"description": "maskloop training on approved versions"}
            for m in registered
            if not interactive.is_interactive(m)
        }
        if lead
        else {},
        "strategies": {
            "priority": {"description": "maskloop's next task (attention priority), with the edit lease"},
            "random": {"description": "a random open scan"},
            "first": {"description": "the first open scan"},
        },
        "scoring": {},
        "train_stats": {},
        "datastore": {"total": total, "completed": completed, "label_tags": {"final": completed}},
    }


def _model_info(model: Model, label_names: dict[str, int]) -> dict[str, Any]:
    """A model as /info/ lists it: a click-guided one as DeepEdit (its labels and "background"), others as
    segmentation models of every label."""
    if not interactive.is_interactive(model):
        return {
            "type": "segmentation",
            "labels": label_names,
            "dimension": 3,
            "description": f"maskloop model {model.name} ({model.architecture})",
            "config": {},
        }
    known = {name: value for name, value in label_names.items() if name in set(model.structures)}
    return {
        "type": "deepedit",
        "labels": {**known, "background": 0},
        "dimension": 3,
        "description": f"maskloop click-guided model {model.name}: positive clicks on a label, negative ones on "
        "'background' (DeepEdit), or foreground/background (DeepGrow)",
        "config": {},
    }


@router.post("/activelearning/{strategy}", response_model=SampleOut)
def activelearning(
    strategy: str,
    db: DbSession,
    body: SampleRequest | None = None,
    access: ProjectAccess = require_project("write_labels"),
) -> SampleOut:
    """The next image for the caller by a strategy (priority: maskloop's next task), taking the edit lease."""
    client_id = (body or SampleRequest()).client_id
    scan = flows.next_sample(db, access.project, strategy, client_id=client_id, actor=access.user, role=access.role)
    if scan is None:
        raise NotFound("no image is waiting for you")
    return SampleOut(
        id=scan.case_id,
        name=f"{scan.case_id}.nii.gz",
        path=f"{scan.case_id}.nii.gz",
        checksum=f"SHA256:{scan.image_digest}",
        strategy=strategy,
    )


@router.get("/datastore/")
def datastore(
    db: DbSession,
    output: Annotated[str, Query()] = "stats",
    access: ProjectAccess = require_project("read"),
) -> dict[str, Any]:
    """Datastore totals; `output=all` adds at most the first 1,000 objects."""
    total, completed = service.datastore_counts(db, access.project)
    answer: dict[str, Any] = {"total": total, "completed": completed, "label_tags": {"final": completed}}
    if output == "all":
        objects = {
            s.case_id: {
                "image": {"ext": ".nii.gz", "info": {"name": f"{s.case_id}.nii.gz"}},
                "labels": {"final": {"ext": ".nii.gz"}} if s.head_version_id else {},
            }
            for s in service.datastore_page(db, access.project)
        }
        answer["objects"] = objects
        answer["truncated"] = total > len(objects)
    return answer


@router.get("/datastore/image", response_class=Response)
def datastore_image(
    request: Request,
    db: DbSession,
    blobs: Blobs,
    image: Annotated[str, Query()],
    access: ProjectAccess = require_project("read"),
) -> Response:
    """The scan's stored .nii.gz, as is; the read is logged."""
    scan = service.scan_by_case_id(db, access.project, image)
    reads.record_read(
        db,
        actor=access.user,
        project_id=scan.project_id,
        scan_id=scan.id,
        kind="volume",
        object_id=scan.id,
        digest=scan.image_digest,
        client=request.client.host if request.client else None,
    )
    headers = {"Content-Disposition": f'attachment; filename="{scan.case_id}.nii.gz"'}
    return Response(blobs.get_bytes(scan.image_digest), media_type=NIFTI_MEDIA, headers=headers)


@router.get("/datastore/label", response_class=Response)
def datastore_label(
    request: Request,
    db: DbSession,
    blobs: Blobs,
    label: Annotated[str, Query()],
    tag: Annotated[str, Query()] = "final",
    access: ProjectAccess = require_project("read"),
) -> Response:
    """The head version of the scan as a combined label map (.nii.gz)."""
    scan = service.scan_by_case_id(db, access.project, label)
    if scan.head_version_id is None:
        raise NotFound(f"image {label!r} has no label yet")
    version = labels.get_version(db, scan.head_version_id)
    written = service.label_file(db, blobs, scan, version, ".nii.gz")
    reads.record_read(
        db,
        actor=access.user,
        project_id=scan.project_id,
        scan_id=scan.id,
        kind="combined",
        object_id=version.id,
        detail=",".join(written.structures),
        client=request.client.host if request.client else None,
    )
    headers = {"Content-Disposition": f'attachment; filename="{written.filename}"'}
    return Response(written.data, media_type=NIFTI_MEDIA, headers=headers)


def _label_params(raw: object) -> LabelParams:
    if raw is None:
        return LabelParams()
    if not isinstance(raw, str):
        raise InvalidInput("'params' must be a JSON text field")
    try:
        return LabelParams.model_validate(json.loads(raw or "{}"))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise InvalidInput(f"params are invalid: {exc}") from exc


def _label_info(params: LabelParams) -> list[tuple[str, int]] | None:
    if not params.label_info:
        return None
    try:
        return [(str(item["name"]), int(item["idx"])) for item in params.label_info]
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput("label_info entries need 'name' and 'idx'") from exc


@router.put("/datastore/label")
async def put_label(
    request: Request,
    db: DbSession,
    blobs: Blobs,
    settings: SettingsDep,
    image: Annotated[str, Query()],
    tag: Annotated[str, Query()] = "final",
    access: ProjectAccess = require_project("write_labels"),
) -> dict[str, str]:
    """Save a label file as a new version on the head the client was given (409 when stale or approved)."""
    scan = service.scan_by_case_id(db, access.project, image)
    form = await request.form(max_files=1, max_fields=8)
    try:
        upload = form.get("label")
        if not isinstance(upload, StarletteUploadFile):
            raise InvalidInput("a label save needs a 'label' file part")
        params = _label_params(form.get("params"))
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise InvalidInput(f"label file is larger than {settings.max_upload_mb} MiB")
        filename = upload.filename or "label.nii.gz"
    finally:
        await form.close()

    def _save() -> dict[str, str]:
        label = service.decode_label(filename, data, scan, service.structures(db, access.project), _label_info(params))
        version = flows.save_label(db, blobs, scan, label, client_id=params.client_id, actor=access.user)
        return {"image": scan.case_id, "label": scan.case_id, "version": str(version.id)}

    return await run_in_threadpool(_save)


@router.delete("/datastore/label", status_code=405)
def delete_label(access: ProjectAccess = require_project("read")) -> Response:
    """Refused: label versions are immutable."""
    body = {
        "detail": "label versions are immutable in maskloop: save a new version instead of deleting",
        "error": "method_not_allowed",
    }
    return Response(json.dumps(body), status_code=405, media_type="application/json", headers={"Allow": "GET, PUT"})


def _multipart(params: dict[str, Any], filename: str, payload: bytes) -> Response:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n'
        "Content-Type: application/json\r\n\r\n".encode()
        + json.dumps(params).encode()
        + b"\r\n",
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + payload
        + b"\r\n",
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return Response(body, media_type=f"multipart/form-data; boundary={boundary}")


@router.post("/infer/{model}", response_class=Response)
async def infer(
    request: Request,
    model: str,
    db: DbSession,
    blobs: Blobs,
    settings: SettingsDep,
    image: Annotated[str, Query()],
    output: Annotated[str, Query()] = "image",
    access: ProjectAccess = require_project("write_labels"),
) -> Response:
    """Run a model's promoted version on the image through the queue and wait (504 with the job id past the timeout)."""
    params: dict[str, Any] = {}
    if request.headers.get("content-type", "").startswith("multipart/"):
        form = await request.form(max_files=2, max_fields=8)
        try:
            raw = form.get("params")
            params = _json_object(raw) if isinstance(raw, str) else {}
        finally:
            await form.close()
    client_id = str(params.get("client_id") or "user-xyz")[:200]
    extension = str(params.get("result_extension") or ".nii.gz")

    def _run() -> Response:
        scan = service.scan_by_case_id(db, access.project, image)
        found = service.model_named(db, access.project, model)
        if found is not None and interactive.is_interactive(found):
            return _refine(scan)
        timeout_s = settings.monailabel_infer_timeout_s
        result = flows.infer(
            db, access.project, scan, model, client_id=client_id, timeout_s=timeout_s, actor=access.user
        )
        if result.job.status != "succeeded" or result.version is None:
            if result.job.status in ("queued", "running"):
                raise GatewayTimeout(
                    f"inference job {result.job.id} is still {result.job.status} after {timeout_s:g} s; it goes on",
                    job_id=result.job.id,
                )
            raise InvalidInput(f"inference job {result.job.id} {result.job.status}", job_id=result.job.id)
        structures = service.structures(db, access.project)
        answer = {
            "label_names": {s.name: s.label_value for s in structures},
            "job_id": result.job.id,
            "label_version_id": result.version.id,
        }
        if output == "json":
            return Response(json.dumps(answer), media_type="application/json")
        written = service.label_file(db, blobs, scan, result.version, extension)
        return _multipart(answer, written.filename, written.data)

    def _refine(scan: Scan) -> Response:
        # Clicks: the structures' masks refined by the warm interactive worker; nothing is written (the client
        # saves the result as a label). Always a combined .nii.gz of only the refined structures, so a client
        # updates exactly those segments.
        refined = interactive_flows.monailabel_refine(
            db, blobs, settings, access.project, scan, model, params, client_id=client_id, actor=access.user
        )
        answer = {
            "label_names": refined.label_values,
            "model_version_id": refined.model.version_id,
            "timings": refined.timings,
        }
        if output == "json":
            return Response(json.dumps(answer), media_type="application/json")
        written = service.masks_file(scan, refined.masks, service.structures(db, access.project))
        return _multipart(answer, written.filename, written.data)

    return await run_in_threadpool(_run)


def _json_object(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"params are not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidInput("params must be a JSON object")
    return value


@router.post("/train/")
def train(
    db: DbSession,
    model: Annotated[str | None, Query()] = None,
    access: ProjectAccess = require_project("assign"),
) -> dict[str, Any]:
    """Start maskloop training on the approved versions (lead only)."""
    job = flows.train(db, access.project, model, actor=access.user)
    return {"job_id": job.id, "status": job.status}
