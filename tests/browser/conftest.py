"""Browser tests: a real `maskloop serve` on SQLite with demo data, driven through Debian Chromium by Playwright.

The built workspace (frontend/dist) is required: CI builds it (`make frontend`) before the tests run. Volumes
stay small (96×96×48) because WebGL runs on SwiftShader here.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

from backend.cli import DEMO_PASSWORD
from backend.imaging.phantom import Phantom, generate_phantom
from tests.factories import post_patch, read_mask, upload_masks, upload_scan

ROOT = Path(__file__).resolve().parents[2]
# A helper building its own copy of the workspace may point the tests at it; CI uses frontend/dist.
DIST = Path(os.environ.get("MASKLOOP_TEST_FRONTEND_DIST", str(ROOT / "frontend" / "dist")))
ARTIFACTS = ROOT / "test-artifacts"
BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("MASKLOOP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHAPE = (96, 96, 48)
SPACING = (3.3, 3.3, 6.6)
ANNOTATOR = "annotator@maskloop.local"
LEAD = "lead@maskloop.local"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """The running app: its base URL, data folder, project and a token per demo account."""

    base: str
    data_dir: Path
    project_id: int
    tokens: dict[str, str]

    def headers(self, email: str = ANNOTATOR) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[email]}"}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=60)

    def get(self, path: str, email: str = ANNOTATOR) -> Any:
        response = httpx.get(self.base + path, headers=self.headers(email), timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def patch(
        self, scan_id: int, base: int, boxes: list[tuple[str, tuple[int, int, int], np.ndarray]], message: str
    ) -> int:
        """Save a patch as the lead through the API (another person's concurrent edit); returns the version id."""
        with self.client() as client:
            response = post_patch(client, self.headers(LEAD), scan_id, base, boxes, message=message)  # type: ignore[arg-type]
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def mask(self, version_id: int, structure: str) -> np.ndarray:
        with self.client() as client:
            return read_mask(client, self.headers(), version_id, structure)  # type: ignore[arg-type]

    def store_attention(self, scan_id: int, structure: str, mask: np.ndarray) -> None:
        """Write an attention map straight into the server's database and blob folder, as the worker would."""
        from sqlalchemy.orm import Session

        from backend.core.blobstore import LocalBlobStore
        from backend.core.db import make_engine
        from backend.projects import service as projects
        from backend.registry import service as registry
        from backend.scans import service as scans

        engine = make_engine(f"sqlite:///{(self.data_dir / 'maskloop.db').resolve()}")
        try:
            with Session(engine) as db:
                scan = scans.get_scan(db, scan_id)
                found = projects.find_structure(projects.structures_of(db, scan.project_id), structure)
                item = registry.AttentionInput(found, mask.astype(bool), int(mask.sum()), 0, 0)
                registry.store_attention(
                    db, LocalBlobStore(self.data_dir / "blobs"), scan, [item], job_id=None, model_version_ids=[]
                )
                db.commit()
        finally:
            engine.dispose()


@contextmanager
def serving(data: Path, extra_env: dict[str, str], demo_args: list[str], emails: tuple[str, ...]) -> Iterator[Server]:
    """`maskloop demo-data <demo_args>` into `data`, then `maskloop serve` on a free port (frontend/dist) with
    `extra_env`; signed-in tokens for `emails`; the server (and its embedded worker) stopped on exit."""
    env = {**os.environ, "MASKLOOP_DATA_DIR": str(data), "MASKLOOP_FRONTEND_DIST": str(DIST), **extra_env}
    env.pop("MASKLOOP_DATABASE_URL", None)
    setup = subprocess.run(
        [str(BIN / "maskloop"), "demo-data", *demo_args, "--no-preannotate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    port = _free_port()
    log = (data / "server.log").open("w")
    proc = subprocess.Popen([str(BIN / "maskloop"), "serve", "--port", str(port)], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("maskloop serve did not come up: " + (data / "server.log").read_text())
        tokens = {}
        for email in emails:
            login = httpx.post(f"{base}/api/auth/login", json={"email": email, "password": DEMO_PASSWORD})
            assert login.status_code == 200, login.text
            tokens[email] = login.json()["access_token"]
        projects = httpx.get(f"{base}/api/projects", headers={"Authorization": f"Bearer {tokens[LEAD]}"}).json()
        yield Server(base=base, data_dir=data, project_id=projects[0]["id"], tokens=tokens)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # its embedded worker follows it (parent-death signal)
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`maskloop demo-data` (2 small phantoms) then `maskloop serve` on a free port, serving frontend/dist."""
    if not (DIST / "index.html").exists():
        pytest.fail(
            f"{DIST}/index.html is missing: build the workspace first (`make frontend`, i.e. "
            "`cd frontend && npm ci && npm run build`)",
            pytrace=False,
        )
    data = tmp_path_factory.mktemp("browser") / "data"
    # The PACS allow-list (an admin setting) admits the test Orthanc, which listens on 127.0.0.1 (test_pacs_page).
    with serving(
        data,
        {"MASKLOOP_PACS_ALLOWED_HOSTS": "127.0.0.1"},
        ["--cases", "2", "--size", "96"],
        (ANNOTATOR, LEAD, "admin@maskloop.local"),
    ) as running:
        yield running


_case_numbers = itertools.count(1)


@dataclass
class LabelledScan:
    """A phantom imported through the API with all its ground-truth masks as the first version."""

    scan: dict[str, Any]
    version: dict[str, Any]
    phantom: Phantom

    @property
    def id(self) -> int:
        return int(self.scan["id"])

    @property
    def head(self) -> int:
        return int(self.version["id"])


@pytest.fixture
def make_scan(server: Server):  # type: ignore[no-untyped-def]
    """Import a fresh phantom scan (any orientation) with its masks, so every test edits its own scan."""

    def make(orientation: str = "RAS", seed: int = 11, case_id: str | None = None) -> LabelledScan:
        # SHAPE/SPACING are RAS-canonical; a stored orientation permutes them (same anatomy in world space).
        ornt = axcodes2ornt(tuple(orientation))
        shape = tuple(SHAPE[int(axis)] for axis, _ in ornt)
        spacing = tuple(SPACING[int(axis)] for axis, _ in ornt)
        phantom = generate_phantom(shape, spacing, seed=seed, orientation=orientation)
        case = case_id or f"BROWSER_{orientation}_{next(_case_numbers):03d}_{os.getpid()}"
        with server.client() as client:
            lead = server.headers(LEAD)
            scan = upload_scan(client, lead, server.project_id, phantom, case)  # type: ignore[arg-type]
            masks = {k: v for k, v in phantom.masks.items() if v.any()}
            version = upload_masks(client, lead, scan["id"], masks, phantom.affine)  # type: ignore[arg-type]
        return LabelledScan(scan=scan, version=version, phantom=phantom)

    return make


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    """Debian's Chromium (Playwright cannot download its own here), WebGL2 on SwiftShader."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium", pytrace=False)
    browser = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context (empty storage) per test; a screenshot lands in test-artifacts/ on failure."""
    context = browser.new_context(viewport={"width": 1360, "height": 820}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(30_000)
    _predicates_as_functions(page)
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"failed-{request.node.name}.png"))
        (ARTIFACTS / f"failed-{request.node.name}.log").write_text("\n".join(errors))
    context.close()
    assert not [e for e in errors if "pageerror" in e], errors
    # The app must run under its Content-Security-Policy without a single refusal.
    assert not [e for e in errors if "Content Security Policy" in e], errors


_FUNCTION = re.compile(r"^\s*(async\s+)?(\(|function\b|[A-Za-z_$][\w$]*\s*=>)")


def _predicates_as_functions(page: Page) -> None:
    """Playwright evaluates a bare-expression predicate with eval(), which the page's CSP (no 'unsafe-eval')
    refuses; a function predicate is called through the debugger protocol instead, so wrap expressions."""
    wait_for_function = page.wait_for_function

    def wait(expression: str, **kwargs: Any) -> Any:
        if not _FUNCTION.match(expression):
            expression = f"() => ({expression})"
        return wait_for_function(expression, **kwargs)

    page.wait_for_function = wait  # type: ignore[method-assign]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def sign_in_with_token(page: Page, server: Server, email: str = ANNOTATOR) -> None:
    """Log in through the browser context's own HTTP client before the app starts (the login form has its own
    test): the server's refresh and CSRF cookies land in the context, and the page takes up that session on
    load (POST /api/auth/session), keeping its access token in memory only."""
    login = page.context.request.post(f"{server.base}/api/auth/login", data={"email": email, "password": DEMO_PASSWORD})
    assert login.status == 200, login.text()


def open_scan(page: Page, server: Server, scan_id: int) -> None:
    page.goto(f"{server.base}/#/scan/{scan_id}")
    wait_ready(page)


def wait_ready(page: Page) -> None:
    page.wait_for_function("window.maskloop && window.maskloop.ready", timeout=60_000)


def state(page: Page) -> dict[str, Any]:
    return dict(page.evaluate("window.maskloop.state()"))


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
