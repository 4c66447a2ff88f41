"""Label version endpoints: create (masks, combined map, patch), read, lineage, masks, combined map, diff."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Query, Request, UploadFile, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.datastructures import UploadFile as StarletteUploadFile

from backend.auth.dependencies import Blobs, DbSession, SettingsDep
from backend.core import uploads
from backend.core.db import read_after_commit
from backend.core.errors import InvalidInput, NotFound, PayloadTooLarge
from backend.core.filenames import clean_file_name
from backend.core.ids import PathId
from backend.flows import labels as flows
from backend.flows import reads
from backend.imaging import chunks, nifti, nifti_masks
from backend.labels import service
from backend.labels.dependencies import VersionAccess, require_version
from backend.labels.schemas import (
    AuthorOut,
    DiffOut,
    DraftOut,
    PatchBox,
    PatchRequest,
    StructureDiffOut,
    VersionOut,
    VersionStructureOut,
)
from backend.models import LabelDraft, LabelVersion, Scan, Structure, User
from backend.projects import service as projects
from backend.quality import service as quality
from backend.scans import service as scans
from backend.scans.dependencies import ScanAccess, require_scan

router = APIRouter(tags=["labels"])

NIFTI_MEDIA = "application/octet-stream"


def version_out(
    version: LabelVersion,
    scan: Scan,
    structures: list[Structure],
    authors: dict[int, User],
    inputs: dict[int, list[int]] | None = None,
) -> VersionOut:
    """Serialise a version with its per-structure rows in schema order (and a fusion's input versions)."""
    by_id = {s.id: s for s in structures}
    author = authors.get(version.author_user_id) if version.author_user_id else None
    rows = sorted(version.structures, key=lambda e: by_id[e.structure_id].position)
    return VersionOut(
        id=version.id,
        scan_id=version.scan_id,
        parent_id=version.parent_id,
        kind=version.kind,
        author=AuthorOut(
            user_id=version.author_user_id,
            display_name=author.display_name if author else None,
            model_version_id=version.author_model_version_id,
        ),
        message=version.message,
        created_at=version.created_at,
        is_head=scan.head_version_id == version.id,
        is_branch=version.is_branch,
        new_bytes=version.new_bytes,
        structures=[
            VersionStructureOut(
                name=by_id[e.structure_id].name,
                label_value=by_id[e.structure_id].label_value,
                status=e.status,
                voxel_count=e.voxel_count,
                volume_ml=e.volume_ml,
                changed=e.changed,
            )
            for e in rows
        ],
        input_version_ids=(inputs or {}).get(version.id, []),
    )


def _fusion_inputs(db: DbSession, versions: list[LabelVersion]) -> dict[int, list[int]]:
    return quality.fusion_inputs(db, [v.id for v in versions if v.kind == "fusion"])


def _one_out(db: DbSession, version: LabelVersion, scan: Scan) -> VersionOut:
    structures = projects.structures_of(db, scan.project_id)
    return version_out(version, scan, structures, service.authors_of(db, [version]), _fusion_inputs(db, [version]))


@router.get("/api/scans/{scan_id}/versions", response_model=list[VersionOut])
def list_versions(db: DbSession, access: ScanAccess = require_scan("read")) -> list[VersionOut]:
    """Every version of a scan, oldest first; parent ids give the lineage graph."""
    hidden = quality.hidden_version_ids(db, access.scan.id, access.user)
    versions = [v for v in service.list_versions(db, access.scan) if v.id not in hidden]
    structures = projects.structures_of(db, access.scan.project_id)
    authors, inputs = service.authors_of(db, versions), _fusion_inputs(db, versions)
    return [version_out(v, access.scan, structures, authors, inputs) for v in versions]


class MasksForm(BaseModel):
    """The multipart body of a save from per-structure masks."""

    model_config = ConfigDict(title="Body_create_from_masks_api_scans__scan_id__versions_post")
    files: Annotated[list[UploadFile], Field(description="One <structure>.nii.gz per structure")]
    base_version_id: int | None = None
    message: Annotated[str, Field(max_length=2000)] = ""
    kind: str = "human"
    missing: Annotated[str, Field(description="comma-separated structures recorded as missing")] = ""
    idempotency_key: Annotated[str | None, Field(max_length=200)] = None


class LabelMapForm(BaseModel):
    """The multipart body of a save from a combined label map."""

    model_config = ConfigDict(title="Body_create_from_label_map_api_scans__scan_id__versions_combined_post")
    file: Annotated[UploadFile, Field(description="An integer label map whose values are schema label values")]
    base_version_id: int | None = None
    message: Annotated[str, Field(max_length=2000)] = ""
    kind: str = "human"
    idempotency_key: Annotated[str | None, Field(max_length=200)] = None


# One mask file per structure (a schema has a few dozen); the patch route's box parts share the bound.
MAX_MASK_FILES = 256


@router.post(
    "/api/scans/{scan_id}/versions",
    response_model=VersionOut,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={"requestBody": uploads.multipart_body(MasksForm)},
)
async def create_from_masks(
    request: Request,
    db: DbSession,
    blobs: Blobs,
    settings: SettingsDep,
    access: ScanAccess = require_scan("write_labels"),
) -> VersionOut:
    """Create a version from per-structure NIfTI masks; structures not uploaded are kept from the base."""
    # The body is parsed only now, after the access dependency: an unauthorised caller's upload is never read.
    form = uploads.form_of(request, MasksForm, max_files=MAX_MASK_FILES, invalid=RequestValidationError)
    async with form as fields:
        return await run_in_threadpool(_create_from_masks, db, blobs, settings, access, fields)


def _create_from_masks(
    db: DbSession, blobs: Blobs, settings: SettingsDep, access: ScanAccess, fields: MasksForm
) -> VersionOut:
    # A kind the caller may not upload is refused before any mask is decoded.
    kind = flows.upload_kind(access.user, fields.kind)
    geometry = scans.geometry_of(access.scan)
    mask_values: dict[str, nifti.MaskValues] = {}
    files: dict[str, tuple[bytes, str]] = {}
    for upload in fields.files:
        name = scans.case_id_from_filename(upload.filename or "")
        if not name:
            raise InvalidInput("every mask file needs a name: <structure>.nii.gz")
        files[name] = (uploads.read_limited(upload, settings.max_upload_bytes), upload.filename or name)

    def builder(name: str) -> Callable[[chunks.PutBlob], chunks.MaskManifest]:
        def build(put: chunks.PutBlob) -> chunks.MaskManifest:
            data, filename = files[name]
            manifest, mask_values[name] = nifti_masks.mask_manifest(data, geometry, filename, put)
            return manifest

        return build

    version = flows.save_masks(
        db,
        blobs,
        access.scan,
        {},
        kind=kind,
        message=fields.message,
        base_version_id=fields.base_version_id,
        missing=[m.strip() for m in fields.missing.split(",") if m.strip()],
        idempotency_key=fields.idempotency_key,
        mask_values=mask_values,
        actor=access.user,
        # Each file is inflated a few planes at a time straight into its stored chunks (no whole mask in
        # memory), once the save's checks have passed.
        builders={name: builder(name) for name in files},
    )
    return read_after_commit(db, lambda: _one_out(db, version, access.scan))


@router.post(
    "/api/scans/{scan_id}/versions/combined",
    response_model=VersionOut,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={"requestBody": uploads.multipart_body(LabelMapForm)},
)
async def create_from_label_map(
    request: Request,
    db: DbSession,
    blobs: Blobs,
    settings: SettingsDep,
    access: ScanAccess = require_scan("write_labels"),
) -> VersionOut:
    """Create a version from a combined label map (every schema structure gets its mask, maybe empty)."""
    async with uploads.form_of(request, LabelMapForm, max_files=1, invalid=RequestValidationError) as fields:
        return await run_in_threadpool(_create_from_label_map, db, blobs, settings, access, fields)


def _create_from_label_map(
    db: DbSession, blobs: Blobs, settings: SettingsDep, access: ScanAccess, fields: LabelMapForm
) -> VersionOut:
    kind = flows.upload_kind(access.user, fields.kind)
    data = uploads.read_limited(fields.file, settings.max_upload_bytes)
    filename = fields.file.filename or "labels.nii.gz"
    label_map = nifti.load_label_map_bytes(data, scans.geometry_of(access.scan), filename)
    version = flows.save_label_map(
        db,
        blobs,
        access.scan,
        label_map,
        kind=kind,
        message=fields.message,
        base_version_id=fields.base_version_id,
        idempotency_key=fields.idempotency_key,
        actor=access.user,
    )
    return read_after_commit(db, lambda: _one_out(db, version, access.scan))


@router.post(
    "/api/scans/{scan_id}/versions/patch",
    response_model=VersionOut,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "meta": {"type": "string", "description": "PatchRequest as JSON"},
                        },
                        "additionalProperties": {"type": "string", "format": "binary"},
                    }
                }
            }
        }
    },
)
async def save_patch(
    request: Request,
    db: DbSession,
    blobs: Blobs,
    settings: SettingsDep,
    access: ScanAccess = require_scan("write_labels"),
) -> VersionOut:
    """Save an edit as a child of a base version from the changed boxes only; 409 if the head moved on."""
    # Parsed only now, after the access dependency; the guard middleware bounds the whole body while it streams.
    form = await request.form(max_files=MAX_MASK_FILES, max_fields=16)
    meta_field = form.get("meta")
    if not isinstance(meta_field, str):
        raise InvalidInput("a patch save needs a 'meta' field holding the PatchRequest JSON")
    try:
        meta = PatchRequest.model_validate(json.loads(meta_field))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise InvalidInput(f"patch meta is invalid: {exc}") from exc
    # Decoding, chunk writes and the database work block: keep them off the event loop.
    return await run_in_threadpool(_apply_patch, db, blobs, settings, access, meta, form)


def _apply_patch(
    db: DbSession,
    blobs: Blobs,
    settings: SettingsDep,
    access: ScanAccess,
    meta: PatchRequest,
    form: FormData,
) -> VersionOut:
    patches = []
    for box in meta.patches:
        size = (box.size[0], box.size[1], box.size[2])
        origin = (box.origin[0], box.origin[1], box.origin[2])
        chunks.check_box((access.scan.shape[0], access.scan.shape[1], access.scan.shape[2]), origin, size)
        if size[0] * size[1] * size[2] > settings.max_patch_voxels:
            raise PayloadTooLarge(f"patch box of {list(size)} voxels exceeds the limit of {settings.max_patch_voxels}")
        data = _box_bytes(box, form, settings.max_upload_bytes)
        patches.append(service.BoxPatch(box.structure, origin, chunks.decode_box(data, size, box.encoding)))
    version = flows.save_patch(
        db,
        blobs,
        access.scan,
        patches,
        base_version_id=meta.base_version_id,
        message=meta.message,
        branch=meta.branch,
        idempotency_key=meta.idempotency_key,
        actor=access.user,
    )
    return read_after_commit(db, lambda: _one_out(db, version, access.scan))


def _box_bytes(box: PatchBox, form: FormData, limit: int) -> bytes:
    """A patch box's bytes: inline (`data`, base64: a small box) or its multipart part (within the upload limit)."""
    if box.data is not None:
        try:
            return base64.b64decode(box.data, validate=True)
        except binascii.Error as exc:
            raise InvalidInput(f"patch box data of {box.structure!r} is not valid base64: {exc}") from exc
    part = form.get(box.part or "")
    if not isinstance(part, StarletteUploadFile):
        raise InvalidInput(f"patch part {box.part!r} is missing from the upload")
    return uploads.read_limited(part, limit)


class DicomSegForm(BaseModel):
    """The multipart body of a DICOM SEG import."""

    model_config = ConfigDict(title="Body_import_dicom_seg_api_scans__scan_id__labels_dicom_seg_post")
    file: Annotated[UploadFile, Field(description="A BINARY or FRACTIONAL DICOM SEG of this scan's series")]
    mapping: Annotated[
        str | None, Field(description='JSON {"segment label or number": "structure"} for segments matching nothing')
    ] = None
    base_version_id: int | None = None
    message: Annotated[str, Field(max_length=2000)] = ""
    idempotency_key: Annotated[str | None, Field(max_length=200)] = None


@router.post(
    "/api/scans/{scan_id}/labels/dicom-seg",
    response_model=VersionOut,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={"requestBody": uploads.multipart_body(DicomSegForm)},
)
async def import_dicom_seg(
    request: Request,
    db: DbSession,
    blobs: Blobs,
    settings: SettingsDep,
    access: ScanAccess = require_scan("write_labels"),
) -> VersionOut:
    """Import a DICOM SEG of this scan as an `import` version: segments by code or name, overlaps kept, QA-checked."""
    async with uploads.form_of(request, DicomSegForm, max_files=1, invalid=RequestValidationError) as fields:
        return await run_in_threadpool(_import_dicom_seg, db, blobs, settings, access, fields)


def _import_dicom_seg(
    db: DbSession, blobs: Blobs, settings: SettingsDep, access: ScanAccess, fields: DicomSegForm
) -> VersionOut:
    mapping: dict[str, str] | None = None
    if fields.mapping:
        try:
            parsed = json.loads(fields.mapping)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"mapping is not valid JSON: {exc.msg}") from exc
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise InvalidInput('mapping must be a JSON object {"segment label or number": "structure"}')
        mapping = {str(k): v for k, v in parsed.items()}
    data = uploads.read_limited(fields.file, settings.max_upload_bytes)
    _, version = flows.import_dicom_seg(
        db,
        blobs,
        data,
        filename=clean_file_name(fields.file.filename, default="seg.dcm"),
        scan=access.scan,
        mapping=mapping,
        base_version_id=fields.base_version_id,
        message=fields.message,
        idempotency_key=fields.idempotency_key,
        actor=access.user,
    )
    return read_after_commit(db, lambda: _one_out(db, version, access.scan))


@router.get("/api/versions/{version_id}", response_model=VersionOut)
def get_version(db: DbSession, access: VersionAccess = require_version("read")) -> VersionOut:
    """One version with per-structure voxel counts and volumes."""
    return _one_out(db, access.version, access.scan)


@router.get("/api/versions/{version_id}/lineage", response_model=list[VersionOut])
def get_lineage(db: DbSession, access: VersionAccess = require_version("read")) -> list[VersionOut]:
    """The chain from this version back to the first one, newest first."""
    chain = service.lineage(db, access.version)
    structures = projects.structures_of(db, access.scan.project_id)
    authors, inputs = service.authors_of(db, chain), _fusion_inputs(db, chain)
    return [version_out(v, access.scan, structures, authors, inputs) for v in chain]


@router.get("/api/versions/{version_id}/masks/{structure}", response_class=Response)
def get_mask(
    structure: str, request: Request, db: DbSession, blobs: Blobs, access: VersionAccess = require_version("read")
) -> Response:
    """One structure's binary mask as .nii.gz in the scan's geometry (404 if recorded as missing)."""
    found, entry = service.structure_entry(db, access.version, structure)
    if entry.status != "present":
        raise NotFound(f"structure {found.name!r} is recorded as missing in version {access.version.id}")
    etag = f'"{entry.manifest_digest}-{access.scan.image_digest[:16]}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
    cached = etag in request.headers.get("if-none-match", "")
    reads.record_read(
        db,
        actor=access.user,
        project_id=access.scan.project_id,
        scan_id=access.scan.id,
        kind="mask",
        object_id=access.version.id,
        detail=found.name,
        digest=entry.manifest_digest,
        client=request.client.host if request.client else None,
        not_modified=cached,
    )
    if cached:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    mask = service.read_mask(blobs, access.scan, entry)
    body = nifti.to_nifti_gz(mask.astype("uint8"), scans.geometry_of(access.scan).affine)
    headers["Content-Disposition"] = f'attachment; filename="{found.name}.nii.gz"'
    return Response(body, media_type=NIFTI_MEDIA, headers=headers)


@router.get("/api/versions/{version_id}/combined", response_class=Response)
def get_combined(
    request: Request,
    db: DbSession,
    blobs: Blobs,
    order: Annotated[str | None, Query(description="comma-separated paint order; later wins")] = None,
    access: VersionAccess = require_version("read"),
) -> Response:
    """All structures flattened into one label map with an explicit paint order (an export: overlaps are lost)."""
    names = [n.strip() for n in order.split(",") if n.strip()] if order else None
    label_map, painted = service.combined_map(db, blobs, access.version, names)
    reads.record_read(
        db,
        actor=access.user,
        project_id=access.scan.project_id,
        scan_id=access.scan.id,
        kind="combined",
        object_id=access.version.id,
        detail=",".join(s.name for s in painted),
        client=request.client.host if request.client else None,
    )
    body = nifti.to_nifti_gz(label_map, scans.geometry_of(access.scan).affine)
    return Response(
        body,
        media_type=NIFTI_MEDIA,
        headers={
            "X-Paint-Order": ",".join(s.name for s in painted),
            "Content-Disposition": f'attachment; filename="{access.scan.case_id}_v{access.version.id}.nii.gz"',
        },
    )


@router.get("/api/versions/{version_id}/diff", response_model=DiffOut)
def diff(
    against: Annotated[PathId, Query(description="the other version (a); this version is b")],
    db: DbSession,
    blobs: Blobs,
    access: VersionAccess = require_version("read"),
) -> DiffOut:
    """Per-structure added/removed voxels and Dice from version `against` to this one."""
    other = service.get_version(db, against)
    if other.id in quality.hidden_version_ids(db, access.scan.id, access.user):
        raise NotFound(f"label version {against} not found")
    if other.scan_id != access.scan.id:
        raise InvalidInput(f"version {against} belongs to another scan")
    rows = service.diff_versions(db, blobs, other, access.version)
    return DiffOut(
        version_a=other.id,
        version_b=access.version.id,
        structures=[StructureDiffOut(**row.__dict__) for row in rows],
    )


def _draft_out(draft: LabelDraft, scan: Scan, payload: bytes) -> DraftOut:
    return DraftOut(
        scan_id=scan.id,
        base_version_id=draft.base_version_id,
        updated_at=draft.updated_at,
        payload_bytes=draft.payload_bytes,
        payload=json.loads(payload),
        base_is_head=draft.base_version_id == scan.head_version_id,
    )


@router.put("/api/scans/{scan_id}/draft", response_model=DraftOut)
async def put_draft(
    request: Request, db: DbSession, blobs: Blobs, access: ScanAccess = require_scan("write_labels")
) -> DraftOut:
    """Autosave the caller's unsaved edit ({"base_version_id", "payload"} JSON); replaces the previous draft."""
    # Read while it streams and refused as soon as it passes the limit, never buffered whole first.
    limit = service.MAX_DRAFT_BYTES
    body = await uploads.read_body_limited(request, limit, f"a draft may hold at most {limit // (1 << 20)} MiB")
    try:
        parsed = json.loads(body)
        base_version_id = parsed.get("base_version_id")
        payload = json.dumps(parsed["payload"], separators=(",", ":")).encode()
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as exc:
        raise InvalidInput('a draft is a JSON object {"base_version_id": int|null, "payload": {...}}') from exc
    if base_version_id is not None and not isinstance(base_version_id, int):
        raise InvalidInput("base_version_id must be an integer or null")
    draft = await run_in_threadpool(
        lambda: flows.save_draft(db, blobs, access.scan, base_version_id, payload, actor=access.user)
    )
    return _draft_out(draft, access.scan, payload)


@router.get("/api/scans/{scan_id}/draft", response_model=DraftOut)
def get_draft(db: DbSession, blobs: Blobs, access: ScanAccess = require_scan("write_labels")) -> DraftOut:
    """The caller's draft of this scan (404 when there is none)."""
    draft = service.get_draft(db, access.scan, access.user)
    return _draft_out(draft, access.scan, blobs.get_bytes(draft.payload_digest))


@router.delete("/api/scans/{scan_id}/draft", status_code=status.HTTP_204_NO_CONTENT)
def delete_draft(db: DbSession, access: ScanAccess = require_scan("write_labels")) -> None:
    """Discard the caller's draft of this scan."""
    flows.delete_draft(db, access.scan, actor=access.user)
