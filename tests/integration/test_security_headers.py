"""Browser security headers (issue 11 item 7): CSP without inline script, no framing, nosniff, referrer policy.

Checked on a live uvicorn process serving a built workspace (the HTML a browser gets), and through the app in
process for the API answers, static assets, errors, the placeholder page and the relaxed /docs policy.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from backend.core.config import Settings
from backend.main import create_app

INDEX = """<!doctype html><html><head><title>maskloop</title>
<script type="module" crossorigin src="/assets/app.js"></script></head><body><div id="app"></div></body></html>"""


def _directives(csp: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in csp.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def assert_strict(headers: httpx.Headers) -> None:
    """The workspace policy: scripts only from the origin, never inline or eval; no framing; nosniff."""
    csp = _directives(headers["content-security-policy"])
    assert csp["script-src"] == ["'self'"], csp
    assert csp["default-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["object-src"] == ["'none'"]
    assert "'unsafe-inline'" not in csp["style-src"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert "camera=()" in headers["permissions-policy"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal built workspace: index.html and one script asset."""
    root = tmp_path_factory.mktemp("dist")
    (root / "assets").mkdir()
    (root / "index.html").write_text(INDEX)
    (root / "assets" / "app.js").write_text("console.log('maskloop')\n")
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def live(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`uvicorn backend.main:app` on a free port, serving the minimal workspace (no database needed for /)."""
    data = tmp_path_factory.mktemp("live-data")
    env = {**os.environ, "MASKLOOP_DATA_DIR": str(data), "MASKLOOP_FRONTEND_DIST": str(dist)}
    env.pop("MASKLOOP_DATABASE_URL", None)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "backend.main:app", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(f"{base}/api/health", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None:
                    pytest.fail(proc.stderr.read().decode() if proc.stderr else "uvicorn exited")
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_live_html_and_api_answers_carry_the_headers(live: str) -> None:
    page = httpx.get(f"{live}/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert_strict(page.headers)
    for path in ("/api/health", "/api/projects", "/assets/app.js", "/api/nope"):
        response = httpx.get(f"{live}{path}", timeout=10)
        assert_strict(response.headers)


@pytest.fixture
def app_client(dist: Path, tmp_path: Path) -> Iterator[TestClient]:
    """The app in process, serving the minimal workspace."""
    settings = Settings(data_dir=tmp_path / "data", frontend_dist=dist, secret_key="x" * 48)
    with TestClient(create_app(settings)) as client:
        yield client


def test_errors_assets_and_placeholder_carry_the_headers(app_client: TestClient, tmp_path: Path) -> None:
    for method, path in (
        ("GET", "/"),
        ("GET", "/assets/app.js"),
        ("GET", "/openapi.json"),
        ("POST", "/api/auth/login"),
    ):
        response = app_client.request(method, path, json={} if method == "POST" else None)
        assert_strict(response.headers)
    # Without a built workspace the placeholder page is served under the same policy (and uses no inline style).
    settings = Settings(data_dir=tmp_path / "data2", frontend_dist=tmp_path / "missing", secret_key="x" * 48)
    with TestClient(create_app(settings)) as client:
        placeholder = client.get("/")
        assert_strict(placeholder.headers)
        assert "style=" not in placeholder.text


def test_docs_pages_get_a_relaxed_script_policy_but_stay_unframeable(app_client: TestClient) -> None:
    docs = app_client.get("/docs")
    csp = _directives(docs.headers["content-security-policy"])
    assert "'unsafe-inline'" in csp["script-src"] and "https://cdn.jsdelivr.net" in csp["script-src"]
    assert csp["frame-ancestors"] == ["'none'"] and docs.headers["x-frame-options"] == "DENY"
    assert docs.headers["x-content-type-options"] == "nosniff"
    # The relaxation is for the documentation pages only.
    assert_strict(app_client.get("/openapi.json").headers)
