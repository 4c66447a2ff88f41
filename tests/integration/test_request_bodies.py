"""Request bodies: no body byte is read before the caller is authenticated (and, for uploads, authorised), and
every body is cut off at its route's limit while it streams, chunked or not.

Bytes are counted on the server side: most tests drive the ASGI app with a `receive()` that counts what the app
takes from it; one test runs a real uvicorn server in a thread and reads the guard's per-process counter.
"""

from __future__ import annotations

import asyncio
import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend.api import PUBLIC_BODY_ROUTES, body_policy
from backend.core import bodies
from backend.core.blobstore import LocalBlobStore, get_blob_store
from backend.core.config import Settings, get_settings
from backend.core.db import get_session
from backend.labels.service import MAX_DRAFT_BYTES
from backend.main import create_app
from tests.conftest import World
from tests.factories import small_phantom, upload_scan

MIB = 1 << 20
CHUNK = 64 * 1024
BOUNDARY = "maskloopboundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def file_preamble(field: str = "file", filename: str = "big.nii.gz") -> bytes:
    """The start of a multipart body whose one file part never ends (the rest is streamed zeros)."""
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


class Exchange:
    """One request driven through the ASGI app with a counting receive(): status, JSON body, bytes taken."""

    def __init__(self, status: int, body: bytes, taken: int) -> None:
        self.status, self.body, self.taken = status, body, taken

    def json(self) -> Any:
        """The answer's JSON body."""
        return json.loads(self.body)


def drive(
    app: FastAPI,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    first: bytes = b"",
    total: int = 4 * MIB,
    chunk: int = CHUNK,
    content_length: int | None = None,
) -> Exchange:
    """Send `first` then zeros up to `total` bytes in `chunk`-sized ASGI messages (chunked unless a
    Content-Length is given) and count how many body bytes the app took from receive()."""
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if content_length is None:
        raw.append((b"transfer-encoding", b"chunked"))
    else:
        raw.append((b"content-length", str(content_length).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
        "state": {},
    }
    zeros = bytes(chunk)
    sent = 0
    taken = 0
    out: dict[str, Any] = {"status": 0, "body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal sent, taken
        if sent >= total:
            await asyncio.sleep(0)
            return {"type": "http.disconnect"}
        piece = first if sent == 0 and first else zeros[: min(chunk, total - sent)]
        sent += len(piece)
        taken += len(piece)
        return {"type": "http.request", "body": piece, "more_body": sent < total}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    # In a thread of its own: a session's Playwright (browser tests on the same xdist worker) keeps an event loop
    # running in the main thread, where asyncio.run refuses to start another.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result()  # type: ignore[arg-type]
    return Exchange(out["status"], out["body"], taken)


def make_app(db: Session, blobs: LocalBlobStore, settings: Settings) -> FastAPI:
    """The real app wired like the `client` fixture (test transaction, blob folder, these settings)."""
    app = create_app(settings)

    def _session() -> Iterator[Session]:
        yield db

    app.dependency_overrides[get_session] = _session
    app.dependency_overrides[get_blob_store] = lambda: blobs
    app.dependency_overrides[get_settings] = lambda: settings
    return app


@pytest.fixture
def small_app(db: Session, blobs: LocalBlobStore, settings: Settings) -> FastAPI:
    """The app with a 1 MiB upload limit (same signing key as `world`'s tokens)."""
    return make_app(db, blobs, settings.model_copy(update={"max_upload_mb": 1}))


BODY_METHODS = ("post", "put", "patch", "delete")


def body_operations(app: FastAPI) -> list[tuple[str, str, bool]]:
    """Every (METHOD, path template, needs a bearer token) of the API that may take a body, from its OpenAPI."""
    spec = app.openapi()
    return [
        (method.upper(), path, bool(operation.get("security")))
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if method in BODY_METHODS
    ]


# --- no credential: not one byte is read ------------------------------------------------------------------------


def test_every_body_route_without_a_bearer_dependency_is_declared_public(client: TestClient) -> None:
    """The guard withholds the body of non-public routes from callers with no credential: a route that works
    without a bearer token (no security requirement in its OpenAPI) must be listed as public."""
    app = client.app
    assert isinstance(app, FastAPI)
    public = {(method, path) for method, path, bearer in body_operations(app) if not bearer}
    assert public, "the login route at least is public"
    assert public <= PUBLIC_BODY_ROUTES, public - PUBLIC_BODY_ROUTES


def test_chunked_bodies_without_a_credential_are_never_read(client: TestClient, settings: Settings) -> None:
    app = client.app
    assert isinstance(app, FastAPI)
    expired = jwt.encode(
        {"sub": "1", "typ": "access", "exp": datetime.now(UTC) - timedelta(minutes=1)},
        settings.resolved_secret_key,
        algorithm="HS256",
    )
    forged = jwt.encode(
        {"sub": "1", "typ": "access", "exp": datetime.now(UTC) + timedelta(hours=1)}, "not-the-key" * 4, "HS256"
    )
    callers: list[dict[str, str]] = [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": f"Bearer {expired}"},
        {"Authorization": f"Bearer {forged}"},
        {"Authorization": "Bearer mlk_short"},
    ]
    routes = [(m, re.sub(r"\{[^}]+\}", "1", p)) for m, p, _ in body_operations(app) if (m, p) not in PUBLIC_BODY_ROUTES]
    assert ("POST", "/api/projects/1/scans") in routes and ("PUT", "/api/scans/1/draft") in routes
    for method, path in routes:
        for headers in callers:
            content_type = MULTIPART if "versions" in path or "scans" in path else "application/json"
            answer = drive(app, method, path, headers={**headers, "content-type": content_type}, total=MIB)
            assert answer.status == 401, (method, path, headers, answer.body)
            assert answer.taken == 0, (method, path, headers)


def test_uploads_are_read_only_after_the_role_check(client: TestClient, world: World) -> None:
    """A known caller without the role, or a well-formed but unknown API token: 401/403 and nothing read."""
    app = client.app
    assert isinstance(app, FastAPI)
    uploads = [
        ("POST", f"/api/projects/{world.project.id}/scans"),
        ("POST", f"/api/projects/{world.project.id}/scans/dicom"),
        ("POST", "/api/scans/1/versions"),
        ("POST", "/api/scans/1/versions/combined"),
        ("POST", "/api/scans/1/versions/patch"),
        ("POST", "/api/models/1/versions"),
        ("PUT", "/api/scans/1/draft"),
    ]
    unknown_token = {"Authorization": "Bearer mlk_" + "A" * 43}
    for method, path in uploads:
        for headers, expected in ((world.headers["viewer"], (403, 404)), (unknown_token, (401,))):
            answer = drive(app, method, path, headers={**headers, "content-type": MULTIPART}, first=file_preamble())
            assert answer.status in expected, (method, path, answer.body)
            assert answer.taken == 0, (method, path)


def test_live_server_reads_nothing_of_an_unauthenticated_chunked_upload(client: TestClient) -> None:
    """A real uvicorn server: a chunked upload with no token gets its 401 and the app took 0 body bytes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(client.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        before = bodies.STATS.snapshot()
        reply, pushed = unauthenticated_chunked_upload(port, 64 * MIB)
        after = bodies.STATS.snapshot()
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()
    assert reply.startswith(b"HTTP/1.1 401 "), reply
    assert b"connection: close" in reply.lower()  # the server hangs up instead of draining the rest
    assert after["bytes_received"] - before["bytes_received"] == 0
    assert after["withheld"] - before["withheld"] == 1
    assert pushed < 64 * MIB  # the server stopped reading the socket long before the client was done


def unauthenticated_chunked_upload(port: int, total: int) -> tuple[bytes, int]:
    """POST a chunked multipart upload of `total` bytes with no token; (reply head, bytes the client got out)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        head = (
            f"POST /api/projects/1/scans HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {MULTIPART}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        conn.sendall(head.encode())
        block = bytes(CHUNK)
        frame = f"{len(block):x}\r\n".encode() + block + b"\r\n"
        pushed = 0
        conn.settimeout(1.0)
        try:
            while pushed < total and not select.select([conn], [], [], 0)[0]:
                conn.sendall(frame)
                pushed += len(block)
        except (TimeoutError, OSError):
            pass  # the server answered and stopped reading (its socket buffers are full, or it closed)
        conn.settimeout(5.0)
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = conn.recv(4096)
            if not data:
                break
            reply += data
    return reply, pushed


# --- authenticated: cut off at the limit while streaming ---------------------------------------------------------


def test_over_limit_chunked_upload_is_413_after_at_most_limit_plus_one_chunk(
    small_app: FastAPI, world: World, tmp_path: Any
) -> None:
    limit = 1 * MIB + MIB  # the 1 MiB upload limit plus the multipart framing allowance
    headers = {**world.headers["lead"], "content-type": MULTIPART}
    path = f"/api/projects/{world.project.id}/scans"
    answer = drive(small_app, "POST", path, headers=headers, first=file_preamble(), total=32 * MIB)
    assert answer.status == 413, answer.body
    assert answer.json()["error"] == "payload_too_large"
    assert "upload limit of 1 MiB" in answer.json()["detail"]
    assert limit < answer.taken <= limit + CHUNK


def test_over_limit_weights_and_versions_are_cut_off(small_app: FastAPI, world: World) -> None:
    limit = 2 * MIB
    for path, field in (("/api/scans/1/versions", "files"), ("/api/models/1/versions", "weights")):
        headers = {**world.headers["platform_admin"], "content-type": MULTIPART}
        answer = drive(small_app, "POST", path, headers=headers, first=file_preamble(field), total=16 * MIB)
        # The access check comes first (no scan/model 1 here: 404, nothing read) ...
        assert answer.status == 404 and answer.taken == 0, (path, answer.body)
    # ... and a real target streams until the limit.
    headers = {**world.headers["lead"], "content-type": MULTIPART}
    answer = drive(
        small_app,
        "POST",
        f"/api/projects/{world.project.id}/scans/dicom",
        headers=headers,
        first=file_preamble("files", "1.dcm"),
        total=16 * MIB,
    )
    assert answer.status == 413 and limit < answer.taken <= limit + CHUNK


def test_content_length_over_the_limit_is_refused_unread_and_lies_are_cut_off(small_app: FastAPI, world: World) -> None:
    headers = {**world.headers["lead"], "content-type": MULTIPART}
    path = f"/api/projects/{world.project.id}/scans"
    announced = drive(small_app, "POST", path, headers=headers, first=file_preamble(), content_length=3 * MIB)
    assert announced.status == 413 and announced.taken == 0
    # Announces 1 KiB, then streams on: counted as it comes, cut off at the limit all the same.
    lie = drive(small_app, "POST", path, headers=headers, first=file_preamble(), content_length=1024, total=16 * MIB)
    assert lie.status == 413 and lie.taken <= 2 * MIB + CHUNK
    # Not a number: ignored, the count decides.
    garbled = drive(
        small_app, "POST", path, headers={**headers, "content-length": "lots"}, first=file_preamble(), total=16 * MIB
    )
    assert garbled.status == 413 and garbled.taken <= 2 * MIB + CHUNK


def test_json_routes_and_login_take_the_small_limit(client: TestClient, world: World) -> None:
    app = client.app
    assert isinstance(app, FastAPI)
    json_headers = {**world.headers["platform_admin"], "content-type": "application/json"}
    answer = drive(app, "POST", "/api/projects", headers=json_headers, first=b'{"slug": "', total=8 * MIB)
    assert answer.status == 413 and MIB < answer.taken <= MIB + CHUNK
    assert "1024 KiB" in answer.json()["detail"]
    login = drive(app, "POST", "/api/auth/login", headers={"content-type": "application/json"}, total=8 * MIB)
    assert login.status == 413 and MIB < login.taken <= MIB + CHUNK


def test_draft_over_the_limit_is_refused_while_streaming(client: TestClient, world: World) -> None:
    scan = upload_scan(client, world.headers["lead"], world.project.id, small_phantom(seed=3), "draft-case")
    app = client.app
    assert isinstance(app, FastAPI)
    headers = {**world.headers["annotator"], "content-type": "application/json"}
    big = MAX_DRAFT_BYTES + 64 * MIB  # the incident's draft was 600 MiB; what matters is where reading stops
    answer = drive(
        app, "PUT", f"/api/scans/{scan['id']}/draft", headers=headers, first=b'{"payload": "', total=big, chunk=MIB
    )
    assert answer.status == 413, answer.body
    assert "a draft may hold at most 64 MiB" in answer.json()["detail"]
    assert MAX_DRAFT_BYTES < answer.taken <= MAX_DRAFT_BYTES + MIB
    # A draft within the limit still saves.
    saved = client.put(
        f"/api/scans/{scan['id']}/draft",
        headers=world.headers["annotator"],
        json={"base_version_id": None, "payload": {"x": 1}},
    )
    assert saved.status_code == 200, saved.text


def test_upload_routes_still_document_their_multipart_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    expected = {
        ("/api/projects/{project_id}/scans", "post"): ({"file", "case_id", "split", "metadata"}, {"file"}),
        ("/api/projects/{project_id}/scans/dicom", "post"): (
            {"files", "case_id", "split", "metadata"},
            {"files", "case_id"},
        ),
        ("/api/scans/{scan_id}/versions", "post"): (
            {"files", "base_version_id", "message", "kind", "missing", "idempotency_key"},
            {"files"},
        ),
        ("/api/scans/{scan_id}/versions/combined", "post"): (
            {"file", "base_version_id", "message", "kind", "idempotency_key"},
            {"file"},
        ),
        ("/api/models/{model_id}/versions", "post"): ({"weights", "provenance", "validation"}, {"weights"}),
    }
    for (path, method), (properties, required) in expected.items():
        body = spec["paths"][path][method]["requestBody"]
        schema = body["content"]["multipart/form-data"]["schema"]
        assert body["required"] is True
        assert set(schema["properties"]) == properties, path
        assert set(schema["required"]) == required, path


def test_form_validation_errors_are_unchanged(client: TestClient, world: World) -> None:
    """A DICOM import without its case id, or with a file where a field belongs: FastAPI's own 422."""
    path = f"/api/projects/{world.project.id}/scans/dicom"
    missing = client.post(path, headers=world.headers["lead"], files={"files": ("1.dcm", b"x")})
    assert missing.status_code == 422, missing.text
    assert "case_id" in missing.text
    not_a_file = client.post(
        f"/api/projects/{world.project.id}/scans", headers=world.headers["lead"], data={"file": "just text"}
    )
    assert not_a_file.status_code == 422, not_a_file.text
    assert "file" in not_a_file.text


def test_every_multipart_route_gets_the_upload_limit(client: TestClient, settings: Settings) -> None:
    """A file route left to the small JSON limit would refuse real uploads: the policy must name each one."""
    app = client.app
    assert isinstance(app, FastAPI)
    policy = body_policy(settings)
    spec = app.openapi()
    multipart = [
        (method.upper(), re.sub(r"\{[^}]+\}", "7", path))
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if "multipart/form-data" in operation.get("requestBody", {}).get("content", {})
    ]
    assert len(multipart) == 8  # scans, DICOM, versions (3), model weights, editor operations, DICOM SEG import
    for method, path in multipart:
        assert policy.limit_for(method, path).max_bytes == settings.max_upload_bytes + MIB, path
    assert policy.limit_for("PUT", "/api/scans/7/draft").max_bytes == MAX_DRAFT_BYTES
    assert policy.limit_for("POST", "/api/projects").max_bytes == settings.max_json_body_kb * 1024
