"""Reading uploaded files and bodies within their size limits; multipart forms parsed after authorisation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar, get_origin

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from backend.core.errors import PayloadTooLarge
from backend.core.filenames import clean_file_name

M = TypeVar("M", bound=BaseModel)

_BLOCK = 1 << 20


class Upload(Protocol):
    """What an uploaded file offers (starlette's UploadFile has both)."""

    filename: str | None
    file: BinaryIO


def spool_files(files: Sequence[Upload], folder: Path, limit: int, *, default: str = "file") -> list[Path]:
    """Write uploads to a folder under their cleaned client names, within `limit` bytes in all (blocking).

    Each file gets its own numbered subfolder, so equal names never collide and no name reaches outside; what a
    reader reports about a file (an error naming it) then names the file as the user sent it."""
    paths: list[Path] = []
    total = 0
    for index, upload in enumerate(files):
        data = read_limited(upload, limit - total)
        total += len(data)
        name = clean_file_name(upload.filename, default=f"{default}-{index + 1}")
        path = folder / f"{index:06d}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


def read_limited(upload: Upload, limit: int) -> bytes:
    """Read an upload completely (blocking: call from a worker thread), refusing it once it passes limit bytes."""
    parts: list[bytes] = []
    total = 0
    upload.file.seek(0)
    while block := upload.file.read(_BLOCK):
        total += len(block)
        if total > limit:
            raise PayloadTooLarge(
                f"file {upload.filename or '(unnamed)'} is larger than the upload limit of {limit // (1 << 20)} MiB"
            )
        parts.append(block)
    return b"".join(parts)


# --- multipart forms parsed inside the handler, after its access dependency ran ---


def form_values(form: FormData, model: type[BaseModel]) -> dict[str, Any]:
    """The values of a parsed multipart form for a model's fields, taken as FastAPI takes Form/File parameters:
    lists by getlist, and an empty string, an empty file input or an empty list counts as absent (default)."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if get_origin(info.annotation) is list:
            items = [v for v in form.getlist(key) if not _empty_file(v)]
            if items:
                values[key] = items
            continue
        value = form.get(key)
        if value is None or value == "" or _empty_file(value):
            continue
        values[key] = value
    return values


def parse_form(form: FormData, model: type[M]) -> M:
    """Validate a parsed form against its model; raises pydantic's ValidationError (see body_errors)."""
    return model.model_validate(form_values(form, model))


def body_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """A form model's validation errors located under "body" as FastAPI reports its own Form/File errors."""
    errors: list[dict[str, Any]] = []
    for error in exc.errors(include_url=False):
        item: dict[str, Any] = {**error, "loc": ("body", *error["loc"])}
        if item["type"] == "missing":
            item["input"] = None
        errors.append(item)
    return errors


@asynccontextmanager
async def form_of(
    request: Request,
    model: type[M],
    *,
    max_files: int,
    invalid: Callable[[list[dict[str, Any]]], Exception],
    max_fields: int = 16,
) -> AsyncIterator[M]:
    """Parse a request's multipart body while it streams (files spool to temporary files) and validate it;
    the spooled files are closed on leaving. Call it in the handler, after the access dependency ran: FastAPI
    would parse File/Form parameters before any dependency. `invalid` builds the error for a form that does
    not validate (the router passes FastAPI's RequestValidationError, so the 422 is the one FastAPI gives)."""
    form = await request.form(max_files=max_files, max_fields=max_fields)
    try:
        try:
            fields = parse_form(form, model)
        except ValidationError as exc:
            raise invalid(body_errors(exc)) from exc
        yield fields
    finally:
        await form.close()


def multipart_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI requestBody of a route that parses its multipart form itself (for openapi_extra)."""
    return {"required": True, "content": {"multipart/form-data": {"schema": model.model_json_schema()}}}


async def read_body_limited(request: Request, limit: int, message: str) -> bytes:
    """Read a raw body while it streams in, refusing it (413) as soon as it passes limit bytes."""
    parts: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(message)
        parts.append(chunk)
    return b"".join(parts)


def _empty_file(value: object) -> bool:
    # Browsers send an empty file part (no name, no bytes) when no file was chosen.
    return isinstance(value, UploadFile) and not value.filename and not value.size
