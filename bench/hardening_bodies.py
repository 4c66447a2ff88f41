"""Request-body benchmark (issue 11 item 3): how much of a hostile upload does the API take in?

Set-up: a throw-away data folder with a migrated SQLite database, an admin and a project; the real app
(`backend.main.create_app`) served by a real uvicorn server on a free loopback port. The server runs in a thread
of this process so the request-body guard's per-process counter (`backend.core.bodies.STATS`, the body bytes
the app took from ASGI `receive()`) can be read exactly; the client is a raw socket speaking HTTP/1.1 chunked
transfer encoding, so no size is announced.

Figures (results.json keys):

* `unauth_upload_bytes_read`: body bytes the app took from `receive()` for a chunked 300 MiB
  `POST /api/projects/1/scans` without a token (before the fix: ~200 MiB spooled to a temp file; goal 0).
  `unauth_upload_client_sent_mib` is what the client got onto the socket before the server answered 401 and
  closed the connection, for context.
* `overlimit_upload_excess_bytes`: with an 8 MiB upload limit, a signed-in admin streams a chunked 300 MiB
  scan import; the bytes the app took beyond the limit (limit = 8 MiB + 1 MiB multipart framing) before its
  413 (goal: at most one receive() chunk; uvicorn hands over at most one socket read, 256 KiB, at a time).
"""

from __future__ import annotations

import math
import select
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from backend.auth import service as auth
from backend.core import bodies, migrate
from backend.core.blobstore import LocalBlobStore, get_blob_store
from backend.core.config import Settings, get_settings
from backend.core.db import get_session, make_engine
from backend.main import create_app
from bench import Row

MIB = 1 << 20
UPLOAD_LIMIT_MB = 8
HOSTILE_BYTES = 300 * MIB
CHUNK = 64 * 1024
ONE_SOCKET_READ = 256 * 1024
BOUNDARY = "benchboundary"
PASSWORD = "bench-password-0123"


@contextmanager
def live_server(settings: Settings, db_url: str) -> Iterator[int]:
    """The real app on a free loopback port, served by uvicorn in a thread of this process."""
    engine = make_engine(db_url)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    app = create_app(settings)

    def _session() -> Iterator[Session]:
        with factory() as session:
            yield session

    app.dependency_overrides[get_session] = _session
    app.dependency_overrides[get_settings] = lambda: settings
    app.dependency_overrides[get_blob_store] = lambda: LocalBlobStore(settings.data_dir / "blobs")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield int(listener.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(20)
        listener.close()
        engine.dispose()


def chunked_upload(port: int, path: str, total: int, token: str | None = None) -> tuple[int, int]:
    """Stream a multipart scan import of `total` bytes with chunked encoding; (status, bytes sent)."""
    auth_line = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth_line}"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    preamble = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="huge.nii.gz"\r\n'
        "Content-Type: application/gzip\r\n\r\n"
    ).encode()
    block = bytes(CHUNK)
    frame = f"{len(block):x}\r\n".encode() + block + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head + f"{len(preamble):x}\r\n".encode() + preamble + b"\r\n")
        conn.settimeout(2.0)
        try:
            while sent < total and not select.select([conn], [], [], 0)[0]:
                conn.sendall(frame)
                sent += len(block)
        except OSError:
            pass  # answered and closed (reset), or no longer reading: either way the server is done with us
        conn.settimeout(10.0)
        reply = b""
        try:
            while b"\r\n" not in reply:
                data = conn.recv(4096)
                if not data:
                    break
                reply += data
        except OSError:
            pass
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
    return status, sent


def run() -> list[Row]:
    """Unauthenticated and over-limit chunked uploads against a live server; bytes taken from receive()."""
    with tempfile.TemporaryDirectory(prefix="maskloop-bench-bodies-") as tmp:
        data_dir = Path(tmp)
        db_url = f"sqlite:///{data_dir / 'maskloop.db'}"
        migrate.upgrade(db_url)
        settings = Settings(data_dir=data_dir, max_upload_mb=UPLOAD_LIMIT_MB, secret_key="bench-" + "k" * 40)
        engine = make_engine(db_url)
        with Session(engine) as session:
            auth.create_user(session, "admin@bench.local", PASSWORD, "Admin", is_admin=True)
            session.commit()
        engine.dispose()
        with live_server(settings, db_url) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            login = http.post("/api/auth/login", json={"email": "admin@bench.local", "password": PASSWORD})
            login.raise_for_status()
            token = login.json()["access_token"]
            created = http.post(
                "/api/projects",
                headers={"Authorization": f"Bearer {token}"},
                json={"slug": "bench", "name": "Bench"},
            )
            created.raise_for_status()
            project_id = created.json()["id"]

            before = bodies.STATS.snapshot()
            unauth_status, unauth_sent = chunked_upload(port, "/api/projects/1/scans", HOSTILE_BYTES)
            middle = bodies.STATS.snapshot()
            over_status, _ = chunked_upload(port, f"/api/projects/{project_id}/scans", HOSTILE_BYTES, token)
            after = bodies.STATS.snapshot()

    unauth_read = middle["bytes_received"] - before["bytes_received"]
    limit = UPLOAD_LIMIT_MB * MIB + MIB
    excess = after["bytes_received"] - middle["bytes_received"] - limit
    unauth_value = float(unauth_read) if unauth_status == 401 else math.nan
    excess_value = float(excess) if over_status == 413 else math.nan
    return [
        Row(
            "unauth_upload_bytes_read",
            "body bytes taken from receive(): unauthenticated chunked 300 MiB upload",
            unauth_value,
            "bytes",
            "0",
            unauth_value == 0,
        ),
        Row(
            "unauth_upload_client_sent_mib",
            "what the client got onto the socket before the 401 and close",
            unauth_sent / MIB,
            "MiB",
        ),
        Row(
            "overlimit_upload_excess_bytes",
            f"bytes taken past the limit: signed-in chunked 300 MiB upload, {UPLOAD_LIMIT_MB} MiB limit",
            excess_value,
            "bytes",
            f"≤ {ONE_SOCKET_READ // 1024} KiB (one chunk)",
            0 < excess_value <= ONE_SOCKET_READ,
        ),
    ]
