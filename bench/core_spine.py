"""Core spine benchmark: O(edit) patch saves and cached volume reads on a full-size CT, over real HTTP.

Set-up: a fresh PostgreSQL database (migrated with Alembic), a real uvicorn server process on a free loopback
port, an admin user and a PanTS-schema project (28 structures). A 512×512×300 phantom CT is imported through
`POST /api/projects/{id}/scans`; its 17 drawn structures plus 11 synthesised ones (adrenal glands, bladder,
celiac artery, colon, common bile duct, femurs, pancreatic duct, prostate, SMA) are imported as one version
through `POST /api/scans/{id}/versions` (kind "import"), so every structure is present and non-empty.

Figures (names are the results.json keys):

* full upload bytes — the sum of the 28 `.nii.gz` mask files, i.e. what a tool that re-uploads every
  structure on each save sends; `full_stored_bytes` is the `new_bytes` the import version stored.
* a *patch* is a brush stroke: a disc of radius 8 voxels painted (or erased, alternately) on 5 consecutive
  axial slices at a random point of the liver boundary, sent as one 17×17×5 `bits+gzip` box of a patch save
  (`POST /api/scans/{id}/versions/patch`) on the current head. Patch upload bytes = the encoded multipart
  request body (meta JSON + box part + boundaries); patch stored bytes = the `new_bytes` of the patch version.
  Medians over the measured saves are used.
* `patch_upload_ratio` = median patch upload bytes / full 28-structure upload bytes (goal ≤ 1 %);
  `patch_storage_ratio` = median patch stored bytes / full 28-structure upload bytes (goal ≤ 1 %).
* `patch_upload_ratio_vs_one_structure` / `patch_storage_ratio_vs_one_structure`: the same numerators over
  the size of the edited structure's own full `.nii.gz` (the liver) — the most conservative denominator.
  Ratios are stored in percent. For context, `patch_storage_ratio_vs_full_stored` divides by what the
  server itself stored for the 28-mask import (its chunked format is far smaller than the uploaded files).
* `patch_save_p50_ms` / `patch_save_p95_ms`: client-side wall time of each patch save request over loopback
  (request already encoded; sending, server work and reading the JSON reply), after a few warm-up saves
  (goal p50 < 150 ms).
* `volume_repeat_ttfb_ms`: p50 time to first byte (response headers and the first body chunk) of a repeat
  full `GET /api/scans/{id}/volume` without a validator (goal < 50 ms); `volume_revalidate_ms`: p50 time of
  a repeat with `If-None-Match` answered 304. `volume_repeat_download_ms` is the p50 of the whole repeat
  download, for context.

Correctness is checked throughout: every patch reply must report the expected liver voxel count with only
the liver changed, and at the end the liver of the last version (and an untouched structure) are downloaded
and compared voxel for voxel with what the client expects; any difference fails the benchmark.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
from scipy import ndimage

from backend.imaging import chunks
from backend.imaging.nifti import Geometry, load_mask_bytes, to_nifti_gz
from backend.imaging.phantom import TEMPLATE_FOV_MM, generate_phantom
from bench import NO_GOAL, Row, percentile

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get(
    "MASKLOOP_BENCH_PG", os.environ.get("MASKLOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
)

SHAPE = (512, 512, 300)
SPACING = (0.75, 0.75, 1.0)
SEED = 20240
EDITED = "liver"
UNTOUCHED = "pancreatic_duct"
BRUSH_RADIUS = 8
BRUSH_SLICES = 5
WARMUP_SAVES = 3
MEASURED_SAVES = 40
VOLUME_REPEATS = 30
PASSWORD = "bench-password-0123"
EMAIL = "bench-admin@maskloop.local"

Vec3 = tuple[float, float, float]


class BenchError(RuntimeError):
    """The benchmark could not run, or the server returned something wrong."""


def _log(message: str) -> None:
    """A progress line on stderr."""
    print(f"  [core_spine] {message}", file=sys.stderr, flush=True)


# --- synthetic structures the phantom does not draw (template millimetres, RAS, origin at the centre) ---

_EXTRA_ELLIPSOIDS: dict[str, tuple[Vec3, Vec3]] = {
    "adrenal_gland_left": ((52.0, -42.0, 30.0), (9.0, 5.0, 14.0)),
    "adrenal_gland_right": ((-52.0, -40.0, 22.0), (9.0, 5.0, 14.0)),
    "bladder": ((0.0, 45.0, -108.0), (38.0, 30.0, 20.0)),
    "prostate": ((0.0, 20.0, -123.0), (16.0, 12.0, 6.0)),
}
_EXTRA_TUBES: dict[str, tuple[list[Vec3], float]] = {
    "celiac_artery": ([(10.0, -32.0, 12.0), (11.0, -12.0, 16.0), (25.0, -8.0, 20.0)], 3.5),
    "superior_mesenteric_artery": ([(10.0, -32.0, -2.0), (10.0, -16.0, -10.0), (8.0, -8.0, -60.0)], 3.5),
    "common_bile_duct": ([(-45.0, 15.0, 25.0), (-42.0, 8.0, 5.0), (-35.0, 2.0, -18.0)], 3.0),
    "pancreatic_duct": ([(-32.0, 0.0, -19.0), (-5.0, 5.0, -10.0), (30.0, 0.0, -2.0), (62.0, -17.0, 8.0)], 1.8),
    "colon": (
        [
            (-95.0, 20.0, -90.0),
            (-95.0, 25.0, 5.0),
            (-60.0, 60.0, 25.0),
            (60.0, 60.0, 25.0),
            (95.0, 25.0, 5.0),
            (95.0, 20.0, -90.0),
        ],
        16.0,
    ),
    "femur_left": ([(85.0, -5.0, -131.0), (80.0, -5.0, -104.0), (70.0, -5.0, -98.0)], 17.0),
    "femur_right": ([(-85.0, -5.0, -131.0), (-80.0, -5.0, -104.0), (-70.0, -5.0, -98.0)], 17.0),
}


def _index_range(lo_mm: float, hi_mm: float, n: int, fov: float) -> range:
    """Indices of the voxels whose centres lie in [lo_mm, hi_mm] along one template axis."""
    i0 = max(0, math.ceil((lo_mm + fov / 2) * n / fov - 0.5))
    i1 = min(n, math.floor((hi_mm + fov / 2) * n / fov - 0.5) + 1)
    return range(i0, max(i0, i1))


def _local_axes(shape: Sequence[int], lo: Vec3, hi: Vec3) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
    """Slices of the box [lo, hi] (mm) and open-grid template coordinates of its voxel centres."""
    ranges = [_index_range(lo[a], hi[a], shape[a], TEMPLATE_FOV_MM[a]) for a in range(3)]
    if any(len(r) == 0 for r in ranges):
        return None
    axes = []
    for a, r in enumerate(ranges):
        coords = (np.arange(r.start, r.stop, dtype=np.float32) + 0.5) * (TEMPLATE_FOV_MM[a] / shape[a])
        coords -= TEMPLATE_FOV_MM[a] / 2
        axes.append(coords.reshape([-1 if b == a else 1 for b in range(3)]))
    return tuple(slice(r.start, r.stop) for r in ranges), axes


def _paint_ellipsoid(mask: np.ndarray, center: Vec3, semi: Vec3) -> None:
    """Set the voxels inside an axis-aligned ellipsoid (template mm)."""
    lo = (center[0] - semi[0], center[1] - semi[1], center[2] - semi[2])
    hi = (center[0] + semi[0], center[1] + semi[1], center[2] + semi[2])
    local = _local_axes(mask.shape, lo, hi)
    if local is None:
        return
    region, axes = local
    inside = sum(((axes[a] - center[a]) / semi[a]) ** 2 for a in range(3)) <= 1.0
    mask[region] |= inside


def _paint_tube(mask: np.ndarray, points: Sequence[Vec3], radius: float) -> None:
    """Set the voxels within radius (template mm) of a polyline."""
    for p0, p1 in pairwise(points):
        lo = (min(p0[0], p1[0]) - radius, min(p0[1], p1[1]) - radius, min(p0[2], p1[2]) - radius)
        hi = (max(p0[0], p1[0]) + radius, max(p0[1], p1[1]) + radius, max(p0[2], p1[2]) + radius)
        local = _local_axes(mask.shape, lo, hi)
        if local is None:
            continue
        region, axes = local
        d = [p1[a] - p0[a] for a in range(3)]
        length2 = sum(v * v for v in d) or 1.0
        rel = [axes[a] - p0[a] for a in range(3)]
        t = np.clip(sum(rel[a] * d[a] for a in range(3)) / length2, 0.0, 1.0)
        dist2 = sum((rel[a] - t * d[a]) ** 2 for a in range(3))
        mask[region] |= dist2 <= radius * radius


def extra_structures(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Plausible masks for the 11 PanTS structures the phantom does not draw (RAS array order)."""
    out: dict[str, np.ndarray] = {}
    for name, (center, semi) in _EXTRA_ELLIPSOIDS.items():
        mask = np.zeros(shape, dtype=bool)
        _paint_ellipsoid(mask, center, semi)
        out[name] = mask
    for name, (points, radius) in _EXTRA_TUBES.items():
        mask = np.zeros(shape, dtype=bool)
        _paint_tube(mask, points, radius)
        if name.startswith("femur"):
            _paint_ellipsoid(mask, points[-1], (22.0, 22.0, 22.0))
        out[name] = mask
    return out


# --- infrastructure: database, server process ---


def _free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def pg_database(name: str) -> Iterator[str]:
    """A fresh PostgreSQL database migrated to head, dropped on exit; yields its SQLAlchemy URL."""
    from backend.core import migrate

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        url = f"{base}/{name}"
        migrate.upgrade(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_admin_and_project(url: str) -> None:
    """Create the admin user and the PanTS-schema project through the service layer."""
    from sqlalchemy.orm import Session

    from backend.auth import service as auth
    from backend.core.db import make_engine
    from backend.projects import service as projects

    engine = make_engine(url)
    try:
        with Session(engine) as db:
            admin = auth.create_user(db, EMAIL, PASSWORD, "Bench Admin", is_admin=True)
            projects.create_project(db, "bench", "Benchmark", admin)
            db.commit()
    finally:
        engine.dispose()


def _tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


@contextmanager
def uvicorn_process(
    url: str, workdir: Path, **env_settings: str
) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """A real uvicorn process serving backend.main:app on a free port (extra `MASKLOOP_*` settings by keyword);
    yields (base URL, log path, process)."""
    port = _free_port()
    log_path = workdir / "server.log"
    env = dict(os.environ)
    env.update(
        MASKLOOP_DATABASE_URL=url,
        MASKLOOP_DATA_DIR=str(workdir / "data"),
        MASKLOOP_BLOB_ROOT=str(workdir / "blobs"),
        MASKLOOP_SECRET_KEY=secrets.token_urlsafe(48),
        MASKLOOP_FRONTEND_DIST=str(workdir / "no-frontend"),
        PYTHONUNBUFFERED="1",
        **{f"MASKLOOP_{key.upper()}": value for key, value in env_settings.items()},
    )
    command = [sys.executable, "-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise BenchError(f"uvicorn exited with status {process.returncode}:\n{_tail(log_path)}")
            try:
                if httpx.get(f"{base}/api/auth/me", timeout=2).status_code == 401:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"uvicorn did not answer within 60 s:\n{_tail(log_path)}")
            time.sleep(0.2)
        yield base, log_path, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


@contextmanager
def uvicorn_server(url: str, workdir: Path) -> Iterator[tuple[str, Path]]:
    """A real uvicorn process serving backend.main:app on a free port; yields (base URL, log path)."""
    with uvicorn_process(url, workdir) as (base, log_path, _process):
        yield base, log_path


def _expect(response: httpx.Response, status: int, what: str, log_path: Path) -> httpx.Response:
    """Raise BenchError unless the response has the expected status."""
    if response.status_code != status:
        raise BenchError(
            f"{what}: expected HTTP {status}, got {response.status_code}: {response.text[:2000]}\n"
            f"server log:\n{_tail(log_path)}"
        )
    return response


# --- the measured workload ---


def _fortran_uint8(mask: np.ndarray) -> np.ndarray:
    """The mask as a Fortran-ordered uint8 array (NIfTI order), copying only its bounding box."""
    out = np.zeros(mask.shape, dtype=np.uint8, order="F")
    box = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hits.size == 0:
            return out
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    out[tuple(box)] = mask[tuple(box)]
    return out


def _encode_mask(mask: np.ndarray, affine: np.ndarray) -> bytes:
    """One mask as .nii.gz, byte for byte what to_nifti_gz writes for it (without transposing the whole array)."""
    return to_nifti_gz(_fortran_uint8(mask), affine)


def _encode_all(masks: dict[str, np.ndarray], affine: np.ndarray) -> dict[str, bytes]:
    """Every mask as the .nii.gz a client would upload (two threads: zlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_encode_mask, mask, affine) for name, mask in masks.items()}
        return {name: future.result() for name, future in futures.items()}


def brush_stroke(expected: np.ndarray, rng: np.random.Generator, add: bool) -> tuple[tuple[int, int, int], np.ndarray]:
    """A disc of BRUSH_RADIUS on BRUSH_SLICES slices at a random boundary point: (origin, new box voxels)."""
    r, half = BRUSH_RADIUS, BRUSH_SLICES // 2
    nx, ny, nz = expected.shape
    zs = np.flatnonzero(expected.any(axis=(0, 1)))
    lo, hi = int(zs[0]), int(zs[-1])
    span = hi - lo
    for _ in range(100):
        k = int(rng.integers(max(half, lo + span // 5), min(nz - half, hi - span // 5) + 1))
        plane = expected[:, :, k]
        boundary = plane & ~ndimage.binary_erosion(plane)
        candidates = np.argwhere(boundary[r : nx - r, r : ny - r]) + r
        if len(candidates) == 0:
            continue
        i, j = (int(v) for v in candidates[int(rng.integers(len(candidates)))])
        origin = (i - r, j - r, k - half)
        region = expected[i - r : i + r + 1, j - r : j + r + 1, k - half : k + half + 1]
        di, dj = np.ogrid[-r : r + 1, -r : r + 1]
        disc = np.broadcast_to((di * di + dj * dj <= r * r)[:, :, None], region.shape)
        box = region | disc if add else region & ~disc
        if not np.array_equal(box, region):
            return origin, box
    raise BenchError(f"found no boundary of {EDITED!r} to paint on")


def _patch_request(
    client: httpx.Client, scan_id: int, base_id: int, origin: tuple[int, int, int], box: np.ndarray, n: int
) -> httpx.Request:
    """The encoded multipart request of a one-box patch save."""
    meta = {
        "base_version_id": base_id,
        "message": f"brush {n}",
        "patches": [
            {
                "structure": EDITED,
                "origin": list(origin),
                "size": list(box.shape),
                "encoding": "bits+gzip",
                "part": "b0",
            }
        ],
    }
    request = client.build_request(
        "POST",
        f"/api/scans/{scan_id}/versions/patch",
        data={"meta": json.dumps(meta)},
        files={"b0": ("b0", chunks.encode_box(box), "application/octet-stream")},
    )
    request.read()
    return request


def _changed(version: dict[str, Any]) -> list[str]:
    """Names of the structures a version reply marks as changed."""
    return sorted(s["name"] for s in version["structures"] if s["changed"])


def _voxels(version: dict[str, Any], name: str) -> int:
    """Voxel count of one structure in a version reply."""
    return int(next(s["voxel_count"] for s in version["structures"] if s["name"] == name))


def _fetch_mask(client: httpx.Client, version_id: int, name: str, geometry: Geometry, log_path: Path) -> np.ndarray:
    """Download one structure's mask of a version as a boolean array."""
    response = _expect(client.get(f"/api/versions/{version_id}/masks/{name}"), 200, f"GET mask {name}", log_path)
    return load_mask_bytes(response.content, geometry, f"{name}.nii.gz")


def _ttfb(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> tuple[float, float, int, int]:
    """(time to first byte, total time, status, body bytes) of one GET, read as a stream."""
    started = time.perf_counter()
    with client.stream("GET", url, headers=headers) as response:
        raw = response.iter_raw()
        first = next(raw, b"")
        ttfb = time.perf_counter() - started
        size = len(first) + sum(len(block) for block in raw)
    return ttfb, time.perf_counter() - started, response.status_code, size


def run() -> list[Row]:
    """Run the core spine benchmark end to end and return its figures."""
    with ExitStack() as stack:
        t0 = time.perf_counter()
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maskloop-bench-")))
        url = stack.enter_context(pg_database(f"maskloop_bench_{os.getpid()}"))
        create_admin_and_project(url)
        base, log_path = stack.enter_context(uvicorn_server(url, workdir))
        _log(f"database migrated and server up in {time.perf_counter() - t0:.1f} s at {base}")
        client = stack.enter_context(httpx.Client(base_url=base, timeout=httpx.Timeout(600.0)))
        login = client.post("/api/auth/login", json={"email": EMAIL, "password": PASSWORD})
        client.headers["Authorization"] = f"Bearer {_expect(login, 200, 'login', log_path).json()['access_token']}"
        projects = _expect(client.get("/api/projects"), 200, "list projects", log_path).json()
        project_id = int(next(p["id"] for p in projects if p["slug"] == "bench"))
        rows = _workload(client, project_id, log_path)
    return rows


def _workload(client: httpx.Client, project_id: int, log_path: Path) -> list[Row]:
    """Import, patch saves, volume reads and the correctness check; returns the figures."""
    t = time.perf_counter()
    phantom = generate_phantom(SHAPE, SPACING, seed=SEED)
    masks = dict(phantom.masks)
    masks.update(extra_structures(SHAPE))
    schema = _expect(client.get(f"/api/projects/{project_id}/schema"), 200, "schema", log_path).json()
    names = [s["name"] for s in schema["structures"]]
    if sorted(names) != sorted(masks) or len(names) != 28:
        raise BenchError(f"schema structures {sorted(names)} differ from the benchmark's {sorted(masks)}")
    empty = [name for name, mask in masks.items() if not mask.any()]
    if empty:
        raise BenchError(f"structures drawn empty: {empty}")
    volume_gz = to_nifti_gz(phantom.volume, phantom.affine)
    mask_files = _encode_all(masks, phantom.affine)
    full_upload = sum(len(data) for data in mask_files.values())
    _log(f"phantom, 28 masks and files ready in {time.perf_counter() - t:.1f} s; masks {full_upload:,} B")

    t = time.perf_counter()
    scan = client.post(
        f"/api/projects/{project_id}/scans",
        files={"file": ("BENCH_0001.nii.gz", volume_gz, "application/gzip")},
        data={"case_id": "BENCH_0001"},
    )
    scan_id = int(_expect(scan, 201, "import CT", log_path).json()["id"])
    ct_import_s = time.perf_counter() - t
    t = time.perf_counter()
    files = [("files", (f"{name}.nii.gz", data, "application/gzip")) for name, data in mask_files.items()]
    imported = client.post(
        f"/api/scans/{scan_id}/versions", files=files, data={"kind": "import", "message": "bench ground truth"}
    )
    version = _expect(imported, 201, "import masks", log_path).json()
    mask_import_s = time.perf_counter() - t
    full_stored = int(version["new_bytes"])
    for name, mask in masks.items():
        if _voxels(version, name) != int(np.count_nonzero(mask)):
            raise BenchError(f"import stored {_voxels(version, name)} voxels of {name}, expected {mask.sum()}")
    _log(f"CT imported in {ct_import_s:.1f} s, 28 masks in {mask_import_s:.1f} s (stored {full_stored:,} B)")

    expected = masks[EDITED].copy()
    count = int(np.count_nonzero(expected))
    rng = np.random.default_rng(SEED)
    head = int(version["id"])
    latencies: list[float] = []
    upload_bytes: list[int] = []
    stored_bytes: list[int] = []
    for n in range(WARMUP_SAVES + MEASURED_SAVES):
        origin, box = brush_stroke(expected, rng, add=n % 2 == 0)
        request = _patch_request(client, scan_id, head, origin, box, n)
        started = time.perf_counter()
        response = client.send(request)
        reply = _expect(response, 201, f"patch save {n}", log_path).json()
        elapsed = time.perf_counter() - started
        region = expected[tuple(slice(o, o + s) for o, s in zip(origin, box.shape, strict=True))]
        count += int(np.count_nonzero(box)) - int(np.count_nonzero(region))
        region[...] = box
        if reply["parent_id"] != head or _changed(reply) != [EDITED] or _voxels(reply, EDITED) != count:
            raise BenchError(
                f"patch save {n}: parent {reply['parent_id']} (expected {head}), changed {_changed(reply)}, "
                f"{EDITED} voxels {_voxels(reply, EDITED)} (expected {count})"
            )
        head = int(reply["id"])
        if n >= WARMUP_SAVES:
            latencies.append(elapsed * 1000.0)
            upload_bytes.append(len(request.content))
            stored_bytes.append(int(reply["new_bytes"]))
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    _log(f"{MEASURED_SAVES} patch saves: p50 {p50:.1f} ms, p95 {p95:.1f} ms")

    volume_url = f"/api/scans/{scan_id}/volume"
    first = _expect(client.get(volume_url), 200, "GET volume", log_path)
    if first.content != volume_gz:
        raise BenchError("GET volume returned different bytes than were imported")
    etag = first.headers["etag"]
    revalidate: list[float] = []
    for _ in range(VOLUME_REPEATS):
        ttfb, _total, status, _size = _ttfb(client, volume_url, {"If-None-Match": etag})
        if status != 304:
            raise BenchError(f"a repeat GET with If-None-Match answered {status}, not 304")
        revalidate.append(ttfb * 1000.0)
    repeat_ttfb: list[float] = []
    repeat_total: list[float] = []
    for _ in range(VOLUME_REPEATS):
        ttfb, total, status, size = _ttfb(client, volume_url)
        if status != 200 or size != len(volume_gz):
            raise BenchError(f"a repeat GET volume answered {status} with {size} bytes of {len(volume_gz)}")
        repeat_ttfb.append(ttfb * 1000.0)
        repeat_total.append(total * 1000.0)
    _log(f"volume: repeat TTFB p50 {percentile(repeat_ttfb, 50):.1f} ms, 304 p50 {percentile(revalidate, 50):.1f} ms")

    geometry = Geometry.from_affine(SHAPE, phantom.affine)
    stored = _fetch_mask(client, head, EDITED, geometry, log_path)
    if not np.array_equal(stored, expected):
        diff = int(np.count_nonzero(stored != expected))
        raise BenchError(f"the server's {EDITED} of version {head} differs from the expected mask in {diff} voxels")
    if not np.array_equal(_fetch_mask(client, head, UNTOUCHED, geometry, log_path), masks[UNTOUCHED]):
        raise BenchError(f"the untouched {UNTOUCHED} of version {head} differs from the imported mask")
    _log(f"correctness: {EDITED} of version {head} matches the expected mask voxel for voxel")

    one_structure = len(mask_files[EDITED])
    up, st = percentile(upload_bytes, 50), percentile(stored_bytes, 50)
    ttfb50, reval50 = percentile(repeat_ttfb, 50), percentile(revalidate, 50)

    def ratio(key: str, figure: str, num: float, den: float) -> Row:
        value = 100.0 * num / den
        return Row(key, figure, value, "%", "≤ 1 %", value <= 1.0)

    return [
        ratio("patch_upload_ratio", "patch upload / full 28-structure upload", up, full_upload),
        ratio("patch_storage_ratio", "patch stored / full 28-structure upload", st, full_upload),
        ratio("patch_upload_ratio_vs_one_structure", f"patch upload / full {EDITED} upload", up, one_structure),
        ratio("patch_storage_ratio_vs_one_structure", f"patch stored / full {EDITED} upload", st, one_structure),
        Row(
            "patch_storage_ratio_vs_full_stored",
            "patch stored / stored by the 28-mask import (context)",
            100.0 * st / full_stored,
            "%",
        ),
        Row("patch_upload_bytes", "patch upload (median multipart body)", up, "B"),
        Row("patch_stored_bytes", "patch stored (median new_bytes)", st, "B"),
        Row("full_upload_bytes", "full upload (28 .nii.gz masks)", float(full_upload), "B"),
        Row("full_upload_bytes_one_structure", f"full upload of {EDITED} alone", float(one_structure), "B"),
        Row("full_stored_bytes", "stored by the 28-mask import version", float(full_stored), "B"),
        Row("patch_save_p50_ms", f"patch save p50 ({MEASURED_SAVES} saves)", p50, "ms", "< 150 ms", p50 < 150.0),
        Row("patch_save_p95_ms", f"patch save p95 ({MEASURED_SAVES} saves)", p95, "ms", NO_GOAL),
        Row("volume_repeat_ttfb_ms", "volume repeat GET TTFB p50", ttfb50, "ms", "< 50 ms", ttfb50 < 50.0),
        Row("volume_revalidate_ms", "volume repeat GET 304 p50", reval50, "ms", "< 50 ms", reval50 < 50.0),
        Row("volume_repeat_download_ms", "volume repeat GET full body p50", percentile(repeat_total, 50), "ms"),
        Row("volume_bytes", "CT volume .nii.gz", float(len(volume_gz)), "B"),
        Row("ct_import_s", "CT import (POST scans)", ct_import_s, "s"),
        Row("mask_import_s", "28-mask import (POST versions)", mask_import_s, "s"),
    ]
