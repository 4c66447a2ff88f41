"""Interactive AI serving benchmark: the latency of one click through the API, a queue and a warm worker.

A click is `POST /api/scans/{id}/interactive` (one positive click in the liver, previous mask empty) on a real
uvicorn server, answered by a real Celery worker of the `interactive` queue (solo pool, 2 torch threads) that keeps
the model warm and the scan's volume cached. The scan is a 192×192×139 phantom of 1.875 mm voxels, so the region
of a first click is 128³ scan voxels (240 mm, resampled to the model's 3 mm grid), the geometry of the in-process
`interactive_refine_p50_ms` of bench/interactive.py. Client-side wall time over loopback, after the worker was
warmed (`POST …/interactive/warm` and one click); the clicks alternate between three liver points.

- `interactive_click_p50_ms`: PostgreSQL, Redis broker, replies by BLPOP (goal ≤ 1000 ms); `…_p95_ms` beside it.
- `interactive_click_embedded_p50_ms`: the embedded default: SQLite database and broker, reply files, the
  interactive worker `maskloop serve` starts (polling the broker every 50 ms) (goal ≤ 3000 ms).
- `interactive_click_overhead_p50_ms`: the Redis click minus the worker's own refine time (crop, resample,
  network, restore) in the same request: what serving adds (API checks, queue, reply, encoding).

Weights: the bundled `worker/models/weights/interactive_unet.pt` when it exists, else random-init weights of the
same default architecture (the latency does not depend on the weights' values; the row says which was used).
`python -m bench.interactive_serving` prints the figures without touching results.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from bench import Row, percentile
from bench.core_spine import (
    EMAIL,
    PASSWORD,
    ROOT,
    BenchError,
    _expect,
    _tail,
    create_admin_and_project,
    pg_database,
    uvicorn_process,
)

SHAPE = (192, 192, 139)
SPACING = (1.875, 1.875, 1.875)
THREADS = 2
CLICKS = 30
EMBEDDED_CLICKS = 15
P50_GOAL_MS = 1000.0
EMBEDDED_GOAL_MS = 3000.0
BUNDLED = ROOT / "worker" / "models" / "weights" / "interactive_unet.pt"
STRUCTURES = ["liver", "spleen", "kidney_left", "kidney_right", "aorta", "stomach", "pancreas"]


def _log(message: str) -> None:
    print(f"  [interactive_serving] {message}", file=sys.stderr, flush=True)


def _model_files() -> tuple[bytes, dict[str, Any], list[str], str]:
    """(weights, config, structures, what they are): the bundled model, else random-init default weights."""
    if BUNDLED.is_file() and BUNDLED.with_suffix(".json").is_file():
        meta = json.loads(BUNDLED.with_suffix(".json").read_text())
        return BUNDLED.read_bytes(), dict(meta["config"]), list(meta["structures"]), "bundled weights"
    import torch

    from worker.models.interactive.model import InteractiveConfig, build_network
    from worker.models.training import save_weights

    torch.manual_seed(0)
    config = InteractiveConfig()
    return save_weights(build_network(config)), config.to_json(), STRUCTURES, "random-init weights"


@contextmanager
def interactive_worker(env: dict[str, str], workdir: Path) -> Iterator[Path]:
    """A worker of the interactive queue (solo pool), as `maskloop worker --queues interactive` runs it; it also
    takes the cpu queue so the uploaded weights' check runs (before any click: nothing else is queued meanwhile)."""
    log_path = workdir / "interactive-worker.log"
    queues = "interactive,cpu"
    command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queues, "-P", "solo"]
    command += ["--without-gossip", "--without-mingle", "--loglevel", "INFO"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while " ready." not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the interactive worker did not start:\n{_tail(log_path)}")
            time.sleep(0.2)
        yield log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _clicks(
    workdir: Path, url: str, broker: str, n: int, extra_env: dict[str, str]
) -> tuple[list[float], list[float], str]:
    """Set up a project, the model and the scan through the API, then time `n` warm clicks: (wall ms, refine ms)."""
    from backend.imaging.nifti import to_nifti_gz
    from backend.imaging.phantom import generate_phantom

    phantom = generate_phantom(SHAPE, SPACING, seed=21, lesion=False)
    weights, config, structures, what = _model_files()
    create_admin_and_project(url)
    settings = {"broker_url": broker, "torch_threads": str(THREADS)}
    with uvicorn_process(url, workdir, **settings) as (base, server_log, _process):
        env = dict(os.environ)
        env.update(
            MASKLOOP_DATABASE_URL=url,
            MASKLOOP_DATA_DIR=str(workdir / "data"),
            MASKLOOP_BLOB_ROOT=str(workdir / "blobs"),
            MASKLOOP_BROKER_URL=broker,
            MASKLOOP_TORCH_THREADS=str(THREADS),
            **extra_env,
        )
        with interactive_worker(env, workdir) as worker_log, httpx.Client(base_url=base, timeout=120) as client:
            token = client.post("/api/auth/login", json={"email": EMAIL, "password": PASSWORD}).json()
            client.headers["Authorization"] = f"Bearer {token['access_token']}"
            project_id = client.get("/api/projects").json()[0]["id"]
            scan = client.post(
                f"/api/projects/{project_id}/scans",
                files={"file": ("click.nii.gz", to_nifti_gz(phantom.volume, phantom.affine), "application/gzip")},
                data={"case_id": "click-1"},
            )
            scan_id = _expect(scan, 201, "import", server_log).json()["id"]
            body = {"name": "interactive", "architecture": "interactive", "structures": structures, "config": config}
            model = _expect(client.post(f"/api/projects/{project_id}/models", json=body), 201, "model", server_log)
            version = client.post(
                f"/api/models/{model.json()['id']}/versions",
                files={"weights": ("w.pt", weights, "application/octet-stream")},
            )
            version_id = _expect(version, 201, "weights", server_log).json()["id"]
            _expect(client.post(f"/api/model-versions/{version_id}/promote"), 200, "promote", server_log)
            _expect(client.post(f"/api/scans/{scan_id}/interactive/warm", json={}), 202, "warm", server_log)
            points = np.argwhere(phantom.masks["liver"])
            centre = points.mean(axis=0)
            ranked = points[np.argsort(((points - centre) ** 2).sum(axis=1))]
            picks = [[int(v) for v in ranked[i]] for i in (0, len(ranked) // 20, len(ranked) // 10)]
            walls, refines = [], []
            for i in range(n + 2):
                click = {"structure": "liver", "positive": [picks[i % len(picks)]]}
                started = time.perf_counter()
                response = client.post(f"/api/scans/{scan_id}/interactive", json=click)
                wall = (time.perf_counter() - started) * 1000.0
                if response.status_code != 200:
                    raise BenchError(f"click: HTTP {response.status_code}: {response.text}\n{_tail(worker_log)}")
                answer = response.json()
                if i >= 2:  # the first ones warm the caches up (model, volume, allocator)
                    walls.append(wall)
                    timings = answer["timings"]
                    refines.append(sum(timings.get(k, 0.0) for k in ("prepare_ms", "network_ms", "restore_ms")))
            _log(f"{what}: region {answer['size']}, last timings {answer['timings']}")
    return walls, refines, what


def run() -> list[Row]:
    """Measure the figures above."""
    redis_db = 1 + os.getpid() % 15
    redis.Redis(host="127.0.0.1", port=6379, db=redis_db).flushdb()
    with tempfile.TemporaryDirectory(prefix="maskloop-bench-click-") as tmp:
        workdir = Path(tmp)
        with pg_database(f"maskloop_bench_clicks_{os.getpid()}") as url:
            walls, refines, what = _clicks(workdir, url, f"redis://127.0.0.1:6379/{redis_db}", CLICKS, {})
    with tempfile.TemporaryDirectory(prefix="maskloop-bench-click-embedded-") as tmp:
        workdir = Path(tmp)
        (workdir / "data").mkdir()
        from backend.core import migrate

        url = f"sqlite:///{workdir / 'data' / 'maskloop.db'}"
        migrate.upgrade(url)
        broker = f"sqla+sqlite:///{workdir / 'data' / 'broker.db'}"
        embedded, _, _ = _clicks(workdir, url, broker, EMBEDDED_CLICKS, {"MASKLOOP_BROKER_POLL_S": "0.05"})
    p50, p95, e50 = statistics.median(walls), percentile(walls, 95), statistics.median(embedded)
    overhead = statistics.median(w - r for w, r in zip(walls, refines, strict=True))
    _log(f"Redis p50 {p50:.0f} ms p95 {p95:.0f} ms (overhead {overhead:.0f} ms); embedded p50 {e50:.0f} ms")
    where = f"CPU {THREADS} threads, 128³ region, {what}"
    return [
        Row(
            "interactive_click_p50_ms",
            f"AI refine click through API + Redis + warm worker, p50 ({where})",
            p50,
            "ms",
            f"≤ {P50_GOAL_MS:g}",
            p50 <= P50_GOAL_MS,
        ),
        Row("interactive_click_p95_ms", "AI refine click, Redis, p95", p95, "ms"),
        Row(
            "interactive_click_overhead_p50_ms", "AI refine click minus the worker's refine, Redis, p50", overhead, "ms"
        ),
        Row(
            "interactive_click_embedded_p50_ms",
            "AI refine click, embedded default (SQLite broker, reply files), p50",
            e50,
            "ms",
            f"≤ {EMBEDDED_GOAL_MS:g}",
            e50 <= EMBEDDED_GOAL_MS,
        ),
    ]


if __name__ == "__main__":
    for row in run():
        print(f"{row.key}: {row.value:.1f} {row.unit} (goal {row.goal}, met {row.met})")
