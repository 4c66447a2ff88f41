"""Viewer benchmark: the browser workspace on a 256×256×160 CT in headless Chromium (software WebGL).

Set-up: a temporary embedded deployment (SQLite, local blobs) with the demo accounts (`maskloop demo-data`),
then a 256×256×160 phantom CT (int16, 1.4×1.4×1.6 mm, RAS) and its 17 ground-truth masks imported through the
API as the first version; `maskloop serve` on a free loopback port serves the built workspace (frontend/dist,
which must exist: `make frontend`). Debian's Chromium is driven by Playwright with the DESIGN.md §8 flags.

Figures (results.json keys):

* `viewer_first_slice_ms` — median over cold opens (a fresh browser context each: empty HTTP cache and
  storage) of the time from the workspace starting to open the scan (the route handler, right after the
  click in the worklist) to the first axial slice actually rendered: scan metadata, the volume download with
  progress, NIfTI decoding, NiiVue's GPU upload and reorientation pass, one drawn frame — the clock stops
  after a one-pixel readback of that frame (WebGL calls are queued; the readback waits until the GPU has
  executed them) and the next animation frame. Headless Chromium here renders WebGL with SwiftShader (a
  CPU rasteriser on two shared cores), where NiiVue's per-voxel reorientation pass of the 10.5 M-voxel volume
  dominates; `viewer_first_slice_submitted_ms` is the part before the GPU work (download, decode, the
  upload calls and the draw call issued), i.e. about what a hardware GPU would show.
  `viewer_first_slice_warm_ms` is the rendered figure with the volume in the browser's HTTP cache.
* a brush stroke: the liver is made the active structure, then a real mouse stroke (10 mm brush, 6 points
  across ~40 mm on the axial view) is painted and saved. `stroke_save_bytes` is the size of the multipart
  request body the browser sent (`POST /api/scans/{id}/versions/patch`, captured from the network);
  `stroke_full_mask_bytes` is what a full-mask upload of the edited structure would send: the multipart body
  of `POST /api/scans/{id}/versions` carrying the liver after the edit as a gzip-compressed NIfTI (level 6)
  with the same message; `stroke_save_bytes_ratio` = the two, in percent (goal ≤ 1 %). The stroke's box is a few
  dozen bytes, so the body is mostly the meta JSON and the multipart framing: the workspace sends such a small box
  inline in the meta (base64 `data`) instead of as a part of its own, whichever is smaller; the benchmark prints
  the body's make-up (meta JSON, framing, box parts). For context,
  `stroke_full_upload_all_bytes` is the same upload of every structure (what a tool that re-uploads the
  whole label set on each save sends).

The saved version is checked against what the browser painted (the server's liver differs from the base by
exactly the voxels the page reports as added); a mismatch fails the benchmark.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from backend.cli import DEMO_PASSWORD
from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import generate_phantom
from bench import NO_GOAL, Row

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "frontend" / "dist"
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
SHAPE = (256, 256, 160)
SPACING = (1.4, 1.4, 1.6)
SEED = 4242
COLD_OPENS = 3
EDITED = "liver"
BRUSH_MM = 10
USER = "annotator@maskloop.local"
LEAD = "lead@maskloop.local"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _login(base: str, email: str) -> dict[str, Any]:
    response = httpx.post(f"{base}/api/auth/login", json={"email": email, "password": DEMO_PASSWORD}, timeout=30)
    response.raise_for_status()
    return dict(response.json())


def _import_scan(base: str) -> tuple[dict[str, Any], dict[str, Any], np.ndarray]:
    """The big phantom and its masks through the API; returns scan, version and the scan's affine."""
    lead = {"Authorization": f"Bearer {_login(base, LEAD)['access_token']}"}
    project = httpx.get(f"{base}/api/projects", headers=lead, timeout=30).json()[0]
    phantom = generate_phantom(SHAPE, SPACING, seed=SEED)
    with httpx.Client(base_url=base, headers=lead, timeout=300) as client:
        response = client.post(
            f"/api/projects/{project['id']}/scans",
            files={"file": ("bench.nii.gz", to_nifti_gz(phantom.volume, phantom.affine), "application/gzip")},
            data={"case_id": "BENCH_VIEWER_256"},
        )
        response.raise_for_status()
        scan = response.json()
        files = [
            ("files", (f"{name}.nii.gz", to_nifti_gz(mask.astype(np.uint8), phantom.affine), "application/gzip"))
            for name, mask in phantom.masks.items()
            if mask.any()
        ]
        response = client.post(f"/api/scans/{scan['id']}/versions", files=files, data={"kind": "import"})
        response.raise_for_status()
        version = response.json()
    return scan, version, phantom.affine


def _read_mask(base: str, headers: dict[str, str], version_id: int, structure: str) -> np.ndarray:
    import gzip

    import nibabel as nib

    response = httpx.get(f"{base}/api/versions/{version_id}/masks/{structure}", headers=headers, timeout=120)
    response.raise_for_status()
    image = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    return np.asarray(image.dataobj) > 0


def _sign_in(context: Any, base: str) -> None:
    """Log in through the context's HTTP client: its session cookies let the page take up the session on load."""
    response = context.request.post(f"{base}/api/auth/login", data={"email": USER, "password": DEMO_PASSWORD})
    assert response.status == 200, response.text()


def _open_and_time(context: Any, base: str, scan_id: int) -> tuple[Any, float, float]:
    """Open the worklist, click the scan, wait for the first slice; returns the page, rendered and submitted ms."""
    page = context.new_page()
    page.set_default_timeout(180_000)
    page.goto(f"{base}/#/")
    page.wait_for_selector("[data-testid=open-BENCH_VIEWER_256]")
    page.click("[data-testid=open-BENCH_VIEWER_256]")
    page.wait_for_function("() => window.maskloop && window.maskloop.state().timings.firstSlice > 0", timeout=180_000)
    timings = page.evaluate("window.maskloop.state().timings")
    start = timings["openStart"]
    return page, float(timings["firstSlice"] - start), float(timings["submitted"] - start)


def run() -> list[Row]:
    """Set up the deployment, measure cold and warm opens, then a brush-stroke save."""
    from playwright.sync_api import sync_playwright

    if not (DIST / "index.html").exists():
        raise RuntimeError(f"{DIST}/index.html is missing: run `make frontend` first")
    with tempfile.TemporaryDirectory(prefix="maskloop-bench-viewer-") as tmp:
        data = Path(tmp) / "data"
        env = {**os.environ, "MASKLOOP_DATA_DIR": str(data), "MASKLOOP_FRONTEND_DIST": str(DIST)}
        env.pop("MASKLOOP_DATABASE_URL", None)
        setup = subprocess.run(
            [str(BIN / "maskloop"), "demo-data", "--cases", "1", "--size", "64", "--no-preannotate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if setup.returncode != 0:
            raise RuntimeError(setup.stdout + setup.stderr)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        log = (Path(tmp) / "server.log").open("w")
        server = subprocess.Popen(
            [str(BIN / "maskloop"), "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
        try:
            for _ in range(150):
                try:
                    if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            else:
                raise RuntimeError("maskloop serve did not come up")
            scan, version, affine = _import_scan(base)
            login = _login(base, USER)
            headers = {"Authorization": f"Bearer {login['access_token']}"}
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    return _measure(browser, base, scan, version, affine, login, headers)
                finally:
                    browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()


def _measure(
    browser: Any,
    base: str,
    scan: dict[str, Any],
    version: dict[str, Any],
    affine: np.ndarray,
    login: dict[str, Any],
    headers: dict[str, str],
) -> list[Row]:
    cold: list[float] = []
    submitted: list[float] = []
    warm = float("nan")
    for attempt in range(COLD_OPENS):
        context = browser.new_context(viewport={"width": 1360, "height": 820}, device_scale_factor=1)
        _sign_in(context, base)
        page, ms, before_gpu = _open_and_time(context, base, scan["id"])
        cold.append(ms)
        submitted.append(before_gpu)
        if attempt == COLD_OPENS - 1:
            # Warm: the same context again (volume in the HTTP cache), then the stroke in that page.
            page.wait_for_function("() => window.maskloop.ready", timeout=180_000)
            page.goto(f"{base}/#/")
            page.close()
            page, warm, _ = _open_and_time(context, base, scan["id"])
            stroke = _stroke(page, base, scan, version, affine, headers)
        context.close()
    first_slice = statistics.median(cold)
    print(
        f"first slice rendered, cold opens: {[round(v) for v in cold]} ms (submitted to the GPU after "
        f"{[round(v) for v in submitted]} ms); warm: {warm:.0f} ms"
    )
    ratio = 100.0 * stroke["request_bytes"] / stroke["full_bytes"]
    return [
        Row(
            "viewer_first_slice_ms",
            "first axial slice after opening a 256×256×160 CT (cold, median)",
            first_slice,
            "ms",
            "< 15000 ms (software WebGL)",
            first_slice < 15000,
        ),
        Row(
            "viewer_first_slice_submitted_ms",
            "… of which before the GPU work (download, decode, upload calls)",
            statistics.median(submitted),
            "ms",
            "< 3000 ms",
            statistics.median(submitted) < 3000,
        ),
        Row("viewer_first_slice_warm_ms", "first slice, volume already in the HTTP cache", warm, "ms"),
        Row("stroke_save_bytes", "brush-stroke patch save request body", float(stroke["request_bytes"]), "B"),
        Row(
            "stroke_full_mask_bytes",
            "full-mask upload of the edited structure (.nii.gz)",
            float(stroke["full_bytes"]),
            "B",
            NO_GOAL,
        ),
        Row(
            "stroke_full_upload_all_bytes",
            "full upload of every structure (.nii.gz each)",
            float(stroke["full_all_bytes"]),
            "B",
        ),
        Row("stroke_save_bytes_ratio", "stroke save bytes / full-mask upload bytes", ratio, "%", "≤ 1 %", ratio <= 1.0),
    ]


def _stroke(
    page: Any, base: str, scan: dict[str, Any], version: dict[str, Any], affine: np.ndarray, headers: dict[str, str]
) -> dict[str, int]:
    """Paint one mouse stroke on the liver in the axial view, save it, and measure the bytes on the wire."""
    page.wait_for_function("() => window.maskloop.ready", timeout=180_000)
    page.evaluate(f"window.maskloop.setActive('{EDITED}')")
    page.wait_for_function(f"() => window.maskloop.state().active === '{EDITED}'", timeout=120_000)
    page.keyboard.press("b")
    page.evaluate(f"window.maskloop.setBrush({BRUSH_MM})")
    base_mask = _read_mask(base, headers, version["id"], EDITED)
    z = page.evaluate("window.maskloop.crosshair()")[2]
    # Across the liver's edge on the current slice: half inside, half outside.
    ys, xs = np.nonzero(base_mask[:, :, z].T)
    row = int(np.median(ys))
    edge = int(xs[ys == row].max())
    points = []
    for dx in (-14, -8, -2, 4, 10, 16):
        point = page.evaluate("([v, p]) => window.maskloop.clientPointOf(v, p)", [[edge + dx, row, z], 0])
        points.append((point["x"], point["y"]))
    sent: list[int] = []
    bodies: list[tuple[bytes, str]] = []

    def on_request(request: Any) -> None:
        if request.method == "POST" and request.url.endswith("/versions/patch"):
            sent.append(len(request.post_data_buffer or b""))
            bodies.append((request.post_data_buffer or b"", request.headers.get("content-type", "")))

    page.on("request", on_request)
    page.mouse.move(*points[0])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x, y, steps=3)
    page.mouse.up()
    page.wait_for_function(f"() => window.maskloop.state().dirty.includes('{EDITED}')")
    added = {tuple(v) for v in page.evaluate(f"window.maskloop.changedVoxels('{EDITED}').added")}
    new_id = page.evaluate("window.maskloop.save('bench: brush stroke')")
    if not new_id or not sent:
        raise RuntimeError("the stroke was not saved")
    reported = page.evaluate("window.maskloop.state().lastSave.bodyBytes")
    if reported != sent[-1]:
        raise RuntimeError(f"the page built {reported} B but {sent[-1]} B went on the wire")
    after = _read_mask(base, headers, new_id, EDITED)
    server_added = {tuple(int(c) for c in v) for v in np.argwhere(after & ~base_mask)}
    if server_added != added or not added or (base_mask & ~after).any():
        raise RuntimeError("the saved liver differs from what the browser painted")
    full = _upload_bytes(base, scan["id"], {EDITED: after}, affine)
    everything = {EDITED: after}
    for row in version["structures"]:
        if row["status"] == "present" and row["name"] != EDITED:
            everything[row["name"]] = _read_mask(base, headers, version["id"], row["name"])
    full_all = _upload_bytes(base, scan["id"], everything, affine)
    print(
        f"stroke: {len(added)} voxels painted; request {sent[-1]} B ({_make_up(*bodies[-1])}); full {EDITED} upload "
        f"{full} B; all {len(everything)} structures {full_all} B"
    )
    return {"request_bytes": sent[-1], "full_bytes": full, "full_all_bytes": full_all}


def _make_up(body: bytes, content_type: str) -> str:
    """What a multipart body is made of: the meta field's JSON, the box parts' bytes, and the framing."""
    boundary = content_type.partition("boundary=")[2].encode()
    meta = parts = 0
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, value = chunk.partition(b"\r\n\r\n")
        size = len(value) - 2  # the CRLF before the next boundary
        if b'name="meta"' in head:
            meta += size
        else:
            parts += size
    return f"meta JSON {meta} B, box parts {parts} B, framing {len(body) - meta - parts} B"


def _upload_bytes(base: str, scan_id: int, masks: dict[str, np.ndarray], affine: np.ndarray) -> int:
    """The multipart body a full-mask save (`POST /api/scans/{id}/versions`) of these masks would send."""
    files = [
        ("files", (f"{name}.nii.gz", to_nifti_gz(mask.astype(np.uint8), affine, compresslevel=6), "application/gzip"))
        for name, mask in masks.items()
    ]
    request = httpx.Request(
        "POST",
        f"{base}/api/scans/{scan_id}/versions",
        files=files,
        data={"message": "bench: brush stroke", "kind": "human"},
    )
    return len(request.read())
