"""Decompression-bomb benchmark: RSS growth of a live API process while it refuses gzip bombs.

Set-up: a fresh PostgreSQL database (migrated with Alembic), a real uvicorn process serving `backend.main:app`
on a free loopback port, an admin, an annotator and a project holding one small scan (64×64×40, imported over
HTTP). The bomb is the one of issue 11: a 3.2 MB `.nii.gz` whose valid NIfTI-1 header declares 512×512×6200
int16 voxels, followed by a valid gzip stream of 3.25 GB of zeros (built in a second, without inflating it).

Three bombs are sent at once: as the annotator's mask (`POST /api/scans/{id}/versions`), as the annotator's
combined label map (`/versions/combined`) and as the admin's scan import (`POST /api/projects/{id}/scans`).
The server's VmRSS is sampled from `/proc/<pid>/status` every 10 ms while they run.

Figures: `gzip_bomb_rss_growth_mib` = the highest sampled VmRSS (and the VmHWM after, whichever is higher)
minus the VmRSS before the bombs, in MiB (goal ≤ 256); `gzip_bomb_refusal_s` = wall time until the last of the
three answers (each must be 413 or 422).
"""

from __future__ import annotations

import gzip
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np

from bench import Row
from bench.core_spine import BenchError, _tail, pg_database, uvicorn_process

ROOT = Path(__file__).resolve().parents[1]
BOMB_SHAPE = (512, 512, 6200)
PASSWORD = "bench-password-0123"
ADMIN = "decode-admin@maskloop.local"
ANNOTATOR = "decode-annotator@maskloop.local"
GOAL_MIB = 256.0
_BLOCK = 1 << 20

# --- the bomb ---------------------------------------------------------------------------------------------------


def _compose(outer: tuple[list[int], int], inner: tuple[list[int], int]) -> tuple[list[int], int]:
    """The affine GF(2) map outer∘inner, each given as (images of the 32 basis bits, constant)."""

    def apply(columns: list[int], v: int) -> int:
        out, i = 0, 0
        while v:
            if v & 1:
                out ^= columns[i]
            v >>= 1
            i += 1
        return out

    cols_o, const_o = outer
    cols_i, const_i = inner
    return [apply(cols_o, c) for c in cols_i], apply(cols_o, const_i) ^ const_o


def crc32_zeros(crc: int, count: int) -> int:
    """zlib.crc32 of `count` zero bytes continued from `crc`, in microseconds (square-and-multiply on the
    affine map that one zero byte applies to the register) rather than seconds for gigabytes."""
    const = zlib.crc32(b"\0", 0)
    step = ([zlib.crc32(b"\0", 1 << i) ^ const for i in range(32)], const)
    result: tuple[list[int], int] = ([1 << i for i in range(32)], 0)  # identity
    while count:
        if count & 1:
            result = _compose(step, result)
        step = _compose(step, step)
        count >>= 1
    cols, c = result
    out = c
    for i in range(32):
        if crc >> i & 1:
            out ^= cols[i]
    return out


def nifti_gzip_bomb(shape: tuple[int, int, int] = BOMB_SHAPE, dtype: str = "int16") -> bytes:
    """A valid single-member .nii.gz: a NIfTI-1 header declaring `shape` x `dtype`, then that many zero bytes.

    Built without inflating it: after a full flush deflate forgets its history, so every 1 MiB block of zeros
    compresses to the same bytes; the CRC of the zeros is computed algebraically.
    """
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.dtype(dtype))
    header.set_sform(np.diag([0.8, 0.8, 1.0, 1.0]), code=1)
    header.set_qform(np.diag([0.8, 0.8, 1.0, 1.0]), code=1)
    header.set_data_offset(352)
    header_bytes = header.binaryblock + b"\0" * 4  # 348 bytes, then the 4-byte extension flag (none)
    zeros = int(np.prod(shape)) * np.dtype(dtype).itemsize
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [deflate.compress(header_bytes), deflate.flush(zlib.Z_FULL_FLUSH)]
    block = deflate.compress(bytes(_BLOCK)) + deflate.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(zeros - _BLOCK, _BLOCK)
    parts.append(block * (full + 1))
    parts.append(deflate.compress(bytes(rest)) + deflate.flush())
    crc = crc32_zeros(zlib.crc32(header_bytes), zeros)
    size = (len(header_bytes) + zeros) & 0xFFFFFFFF
    gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return gzip_header + b"".join(parts) + struct.pack("<II", crc, size)


def small_scan(shape: tuple[int, int, int] = (64, 64, 40)) -> bytes:
    """A small CT-like .nii.gz for the project's one scan."""
    rng = np.random.default_rng(3)
    data = rng.integers(-1000, 1000, size=shape, dtype=np.int16)
    image = nib.Nifti1Image(data, np.diag([0.8, 0.8, 1.0, 1.0]))
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


# --- the live API -----------------------------------------------------------------------------------------------


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, read from /proc/<pid>/status."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


@dataclass
class LiveApi:
    """A uvicorn API process with a project holding one small scan, and bearer headers for its users."""

    base: str
    pid: int
    log_path: Path
    project_id: int
    scan_id: int
    admin: dict[str, str]
    annotator: dict[str, str]


def _seed(url: str) -> None:
    """An admin, an annotator and a project, through the service layer."""
    from sqlalchemy.orm import Session

    from backend.auth import service as auth
    from backend.core.db import make_engine
    from backend.projects import service as projects

    engine = make_engine(url)
    try:
        with Session(engine) as db:
            admin = auth.create_user(db, ADMIN, PASSWORD, "Decode Admin", is_admin=True)
            project = projects.create_project(db, "decode", "Decode", admin)
            annotator = auth.create_user(db, ANNOTATOR, PASSWORD, "Decode Annotator")
            projects.set_membership(db, project.id, annotator, "annotator", admin)
            db.commit()
    finally:
        engine.dispose()


def _login(client: httpx.Client, email: str) -> dict[str, str]:
    response = client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    if response.status_code != 200:
        raise BenchError(f"login of {email}: HTTP {response.status_code}: {response.text[:500]}")
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@contextmanager
def live_api(workdir: Path, db_name: str, **env_settings: str) -> Iterator[LiveApi]:
    """A fresh database, a uvicorn process on it and the seeded project with its scan (torn down on exit)."""
    with pg_database(db_name) as url:
        _seed(url)
        with uvicorn_process(url, workdir, **env_settings) as (base, log_path, process):
            with httpx.Client(base_url=base, timeout=60) as client:
                admin, annotator = _login(client, ADMIN), _login(client, ANNOTATOR)
                project_id = int(next(p["id"] for p in client.get("/api/projects", headers=admin).json()))
                response = client.post(
                    f"/api/projects/{project_id}/scans",
                    headers=admin,
                    files={"file": ("case1.nii.gz", small_scan(), "application/gzip")},
                )
                if response.status_code != 201:
                    raise BenchError(f"scan import: HTTP {response.status_code}: {response.text[:500]}")
                scan_id = int(response.json()["id"])
            yield LiveApi(base, process.pid, log_path, project_id, scan_id, admin, annotator)


@dataclass
class BombResult:
    """What three parallel bombs did to the API process."""

    statuses: dict[str, int]
    bodies: dict[str, str]
    seconds: float
    rss_before_mib: float
    peak_rss_mib: float
    hwm_after_mib: float

    @property
    def growth_mib(self) -> float:
        """Peak RSS (sampled, or the high-water mark after) minus RSS before, in MiB."""
        return max(self.peak_rss_mib, self.hwm_after_mib) - self.rss_before_mib


def send_bombs(api: LiveApi, bomb: bytes) -> BombResult:
    """Send the bomb as a mask, as a combined label map and as a scan import at once, sampling the server's RSS."""
    requests = {
        "mask": (f"/api/scans/{api.scan_id}/versions", api.annotator, "files", "liver.nii.gz"),
        "combined": (f"/api/scans/{api.scan_id}/versions/combined", api.annotator, "file", "labels.nii.gz"),
        "import": (f"/api/projects/{api.project_id}/scans", api.admin, "file", "bomb.nii.gz"),
    }
    rss_before, _ = memory_kib(api.pid)
    peak = rss_before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, memory_kib(api.pid)[0])
            time.sleep(0.01)

    def post(item: tuple[str, dict[str, str], str, str]) -> httpx.Response:
        path, headers, field, filename = item
        with httpx.Client(base_url=api.base, timeout=120) as client:
            return client.post(path, headers=headers, files={field: (filename, bomb, "application/gzip")})

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=len(requests)) as pool:
            futures = {name: pool.submit(post, item) for name, item in requests.items()}
            responses = {name: future.result() for name, future in futures.items()}
    finally:
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    _, hwm_after = memory_kib(api.pid)
    return BombResult(
        statuses={name: r.status_code for name, r in responses.items()},
        bodies={name: r.text[:500] for name, r in responses.items()},
        seconds=seconds,
        rss_before_mib=rss_before / 1024,
        peak_rss_mib=peak / 1024,
        hwm_after_mib=hwm_after / 1024,
    )


def run() -> list[Row]:
    """Three parallel gzip bombs against a live API: RSS growth (goal ≤ 256 MiB) and time to refuse them."""
    import tempfile

    bomb = nifti_gzip_bomb()
    with (
        tempfile.TemporaryDirectory(prefix="maskloop-bench-decode-") as tmp,
        live_api(Path(tmp), f"maskloop_bench_decode_{os.getpid()}") as api,
    ):
        result = send_bombs(api, bomb)
        refused = all(status in (413, 422) for status in result.statuses.values())
        if not refused:
            raise BenchError(f"a bomb was not refused: {result.statuses} {result.bodies}\n{_tail(api.log_path)}")
    growth = result.growth_mib
    return [
        Row("gzip_bomb_bytes_mib", "gzip bomb upload size", round(len(bomb) / 2**20, 2), "MiB"),
        Row(
            "gzip_bomb_rss_growth_mib",
            "API RSS growth, 3 parallel gzip bombs (512×512×6200 int16 declared)",
            round(growth, 1),
            "MiB",
            f"≤ {GOAL_MIB:g}",
            growth <= GOAL_MIB,
        ),
        Row("gzip_bomb_refusal_s", "time until all 3 bombs are refused (413/422)", round(result.seconds, 2), "s"),
    ]
