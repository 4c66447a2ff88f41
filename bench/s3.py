"""S3 blob backend benchmark: volume time to first byte and patch saves on S3 against the local store, same run.

Set-up: a real S3 API server (moto's standalone `moto_server`, a subprocess on 127.0.0.1 — no MinIO can be
installed here) and, for each backend, a fresh PostgreSQL database and a real uvicorn process (local: a blob
folder; s3: `MASKLOOP_BLOB_BACKEND=s3` on the moto bucket, presigned GET off, so the API proxies the bytes).
On each, the core-spine workload: a 512×512×300 phantom CT imported through `POST /api/projects/{id}/scans`, its
liver imported as the first version, then brush-stroke patch saves (`POST /api/scans/{id}/versions/patch`, one
17×17×5 box on the liver boundary, alternately painting and erasing) and repeat volume GETs. The two servers run
side by side and get their requests alternately (the same strokes), so both see the same load.

Figures (results.json keys):

* `s3_volume_ttfb_ms` — p50 time to first byte of a repeat full `GET /api/scans/{id}/volume` (no validator, so
  a 200 with the whole body, proxied by the API) on the S3 backend (goal ≤ 50 ms). A repeat read comes from the
  API host's local blob cache (`MASKLOOP_S3_CACHE_*`: immutable blobs, filled by the import's upload and by
  whole reads). `s3_volume_cold_ttfb_ms` is one read with that copy removed (streamed from the bucket: moto
  materialises the whole 78 MB object before its first byte), `s3_volume_download_ms` the p50 of the whole
  repeat download, `s3_local_volume_ttfb_ms` the local store's TTFB.
* `s3_patch_save_ratio` — p50 patch save on S3 over p50 patch save on the local store, same run, same strokes
  (goal ≤ 2); `s3_patch_save_p50_ms` and `s3_local_patch_save_p50_ms` are the two medians.

moto is a Python server: one small request costs it about 5–10 ms, several times what MinIO or AWS S3 in the
same region take, so the S3 figures here are pessimistic for a real deployment.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import generate_phantom
from bench import Row, percentile
from bench.core_spine import (
    EDITED,
    EMAIL,
    PASSWORD,
    SEED,
    SHAPE,
    SPACING,
    WARMUP_SAVES,
    _changed,
    _expect,
    _patch_request,
    _ttfb,
    _voxels,
    brush_stroke,
    create_admin_and_project,
    pg_database,
    uvicorn_process,
)
from tests.s3_server import BUCKET, CREDENTIALS, S3Server

MEASURED_SAVES = 30
VOLUME_REPEATS = 20


def _log(message: str) -> None:
    """A progress line on stderr."""
    print(f"  [s3] {message}", file=sys.stderr, flush=True)


@dataclass
class _Side:
    """One server under test: its client, the scan and the liver as the client expects it."""

    name: str
    client: httpx.Client
    log_path: Path
    scan_id: int = 0
    head: int = 0
    expected: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 1), bool))
    count: int = 0
    saves: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    import_s: float = 0.0


def _import(side: _Side, volume_gz: bytes, liver_gz: bytes, liver: np.ndarray) -> None:
    """Sign in, import the CT and the liver as the first version."""
    client, log_path = side.client, side.log_path
    login = client.post("/api/auth/login", json={"email": EMAIL, "password": PASSWORD})
    client.headers["Authorization"] = f"Bearer {_expect(login, 200, 'login', log_path).json()['access_token']}"
    projects = _expect(client.get("/api/projects"), 200, "projects", log_path).json()
    project_id = int(next(p["id"] for p in projects if p["slug"] == "bench"))
    t = time.perf_counter()
    scan = client.post(
        f"/api/projects/{project_id}/scans",
        files={"file": ("BENCH_S3.nii.gz", volume_gz, "application/gzip")},
        data={"case_id": "BENCH_S3"},
    )
    side.scan_id = int(_expect(scan, 201, "import CT", log_path).json()["id"])
    imported = client.post(
        f"/api/scans/{side.scan_id}/versions",
        files=[("files", (f"{EDITED}.nii.gz", liver_gz, "application/gzip"))],
        data={"kind": "import", "message": "bench liver"},
    )
    side.head = int(_expect(imported, 201, "import liver", log_path).json()["id"])
    side.import_s = time.perf_counter() - t
    side.expected = liver.copy()
    side.count = int(np.count_nonzero(liver))


def _save(side: _Side, origin: tuple[int, int, int], box: np.ndarray, n: int, measured: bool) -> None:
    """One brush-stroke patch save on the current head, checked against the expected liver."""
    request = _patch_request(side.client, side.scan_id, side.head, origin, box, n)
    started = time.perf_counter()
    reply = _expect(side.client.send(request), 201, f"{side.name} patch save {n}", side.log_path).json()
    elapsed = time.perf_counter() - started
    region = side.expected[tuple(slice(o, o + s) for o, s in zip(origin, box.shape, strict=True))]
    side.count += int(np.count_nonzero(box)) - int(np.count_nonzero(region))
    region[...] = box
    if reply["parent_id"] != side.head or _changed(reply) != [EDITED] or _voxels(reply, EDITED) != side.count:
        raise RuntimeError(f"{side.name} patch save {n} answered something unexpected: {reply}")
    side.head = int(reply["id"])
    if measured:
        side.saves.append(elapsed * 1000.0)


def _read_volume(side: _Side, volume_gz: bytes) -> None:
    """One repeat full volume GET, timed to its first byte and to its end."""
    first_byte, whole, status, size = _ttfb(side.client, f"/api/scans/{side.scan_id}/volume")
    if status != 200 or size != len(volume_gz):
        raise RuntimeError(f"{side.name}: a repeat GET volume answered {status} with {size} of {len(volume_gz)} B")
    side.ttfb.append(first_byte * 1000.0)
    side.total.append(whole * 1000.0)


def run() -> list[Row]:
    """Run the workload on the local store and on S3 (moto), interleaved request by request, and compare."""
    t = time.perf_counter()
    phantom = generate_phantom(SHAPE, SPACING, seed=SEED)
    liver = phantom.masks[EDITED]
    volume_gz = to_nifti_gz(phantom.volume, phantom.affine)
    liver_gz = to_nifti_gz(liver.astype(np.uint8), phantom.affine)
    _log(f"phantom ready in {time.perf_counter() - t:.1f} s; CT {len(volume_gz):,} B")
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maskloop-bench-s3-")))
        server = S3Server(workdir).start()
        stack.callback(server.stop)
        server.store(prefix="blobs/")  # creates the bucket
        s3_env = {
            "blob_backend": "s3",
            "s3_bucket": BUCKET,
            "s3_endpoint_url": server.endpoint_url,
            "s3_region": CREDENTIALS["AWS_DEFAULT_REGION"],
            "s3_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "s3_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        }
        sides: list[_Side] = []
        for backend, env in (("local", {}), ("s3", s3_env)):
            url = stack.enter_context(pg_database(f"maskloop_bench_s3_{backend}_{os.getpid()}"))
            create_admin_and_project(url)
            folder = workdir / backend
            folder.mkdir()
            base, log_path, _process = stack.enter_context(uvicorn_process(url, folder, **env))
            client = stack.enter_context(httpx.Client(base_url=base, timeout=httpx.Timeout(600.0)))
            side = _Side(backend, client, log_path)
            _import(side, volume_gz, liver_gz, liver)
            sides.append(side)
        local, s3 = sides
        _log(f"servers up, CT + liver imported (local {local.import_s:.1f} s, s3 {s3.import_s:.1f} s)")
        # Interleaved, so both backends see the same load on this shared machine; the same strokes on both.
        rng = np.random.default_rng(SEED)
        for n in range(WARMUP_SAVES + MEASURED_SAVES):
            origin, box = brush_stroke(local.expected, rng, add=n % 2 == 0)
            for side in (local, s3) if n % 2 else (s3, local):
                _save(side, origin, box, n, measured=n >= WARMUP_SAVES)
        # A cold read first: the S3 API process's local blob cache forgets the CT (its import wrote it there).
        digest = hashlib.sha256(volume_gz).hexdigest()
        (workdir / "s3" / "data" / "s3-cache" / digest[:2] / digest).unlink()
        cold_ttfb, _total, status, size = _ttfb(s3.client, f"/api/scans/{s3.scan_id}/volume")
        if status != 200 or size != len(volume_gz):
            raise RuntimeError(f"s3: the cold GET volume answered {status} with {size} of {len(volume_gz)} B")
        for side in sides:
            first = _expect(side.client.get(f"/api/scans/{side.scan_id}/volume"), 200, "GET volume", side.log_path)
            if first.content != volume_gz:
                raise RuntimeError(f"{side.name}: GET volume returned different bytes than were imported")
        for n in range(VOLUME_REPEATS):
            for side in (local, s3) if n % 2 else (s3, local):
                _read_volume(side, volume_gz)
        for side in sides:
            save50, ttfb50 = percentile(side.saves, 50), percentile(side.ttfb, 50)
            _log(f"{side.name}: patch save p50 {save50:.1f} ms, volume TTFB p50 {ttfb50:.1f} ms")
    s3_save, local_save = percentile(s3.saves, 50), percentile(local.saves, 50)
    ratio = s3_save / local_save
    ttfb = percentile(s3.ttfb, 50)
    return [
        Row("s3_volume_ttfb_ms", "S3: volume repeat GET TTFB p50 (proxied)", ttfb, "ms", "≤ 50 ms", ttfb <= 50.0),
        Row("s3_volume_download_ms", "S3: volume repeat GET full body p50", percentile(s3.total, 50), "ms"),
        Row("s3_volume_cold_ttfb_ms", "S3: volume GET TTFB, not in the API's cache", cold_ttfb * 1000.0, "ms"),
        Row("s3_local_volume_ttfb_ms", "local store: volume repeat GET TTFB p50", percentile(local.ttfb, 50), "ms"),
        Row("s3_patch_save_ratio", "patch save p50 on S3 / on the local store", ratio, "×", "≤ 2", ratio <= 2.0),
        Row("s3_patch_save_p50_ms", f"S3: patch save p50 ({MEASURED_SAVES} saves)", s3_save, "ms"),
        Row("s3_local_patch_save_p50_ms", f"local store: patch save p50 ({MEASURED_SAVES} saves)", local_save, "ms"),
        Row("s3_ct_import_s", "S3: CT + liver import", s3.import_s, "s"),
    ]
