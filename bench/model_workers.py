"""Model workers benchmark: platform overhead of a pre-annotation job, and end-to-end job latency on CPU.

- `preannotate_overhead_ratio`: median over warm jobs, each bracketed by direct runs just before and just after it
  (so the pair sees the same machine load), of the job's run time in a real Celery worker (claim, load the scan from the
  blob store, MONAI preprocessing, sliding window, inversion to the scan grid, probability/entropy maps, the
  chunked label version, database writes) divided by a direct `monai.inferers.sliding_window_inference` call
  on the same network, weights and preprocessed volume in this process (same thread count; the mean of the two
  bracketing runs). Goal ≤ 1.15.
- `preannotate_overhead_cpu_ratio`: the same pairs compared on CPU seconds (the job's load, inference and write
  stages in the worker process, all threads, against the direct call's): a diagnostic that hardly moves when other
  processes compete for the cores, unlike the wall-clock ratio.
- `preannotate_cpu_256_s`: wall time from the API request to the job's `succeeded` (its `finished_at`) for a
  256×256×128 scan (warm worker, median of the warm runs), through Redis and a real worker process.
- The GPU figure (512×512×300, goal < 10 s) needs the device machine; it is reported as not measured here.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import redis

from bench import Row
from bench.core_spine import (
    EMAIL,
    PASSWORD,
    ROOT,
    BenchError,
    _expect,
    _tail,
    create_admin_and_project,
    pg_database,
    uvicorn_server,
)

SHAPE = (256, 256, 128)
SPACING = (1.5, 1.5, 1.5)
STRUCTURES = ["liver", "spleen", "kidney_left", "kidney_right", "aorta", "postcava", "stomach", "pancreas"]
NETWORK = {"channels": [16, 32, 64, 128], "num_res_units": 1}
THREADS = 2
WARM_RUNS = 6


def _log(message: str) -> None:
    print(f"[model_workers] {message}", flush=True)


@contextmanager
def worker_process(url: str, workdir: Path, broker: str) -> Iterator[Path]:
    """A real Celery worker (prefork, one task at a time) on both queues."""
    log_path = workdir / "worker.log"
    env = dict(os.environ)
    env.update(
        MASKLOOP_DATABASE_URL=url,
        MASKLOOP_DATA_DIR=str(workdir / "data"),
        MASKLOOP_BLOB_ROOT=str(workdir / "blobs"),
        MASKLOOP_BROKER_URL=broker,
        MASKLOOP_TORCH_THREADS=str(THREADS),
    )
    command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "gpu,cpu", "-c", "1"]
    command += ["-P", "prefork", "--without-gossip", "--without-mingle", "--loglevel", "WARNING"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _weights() -> bytes:
    import torch

    from worker.models.networks import build_network
    from worker.models.training import save_weights

    torch.manual_seed(0)
    return save_weights(build_network("unet", NETWORK, len(STRUCTURES)))


def _direct_seconds(volume: np.ndarray, affine: np.ndarray, weights: bytes, repeats: int = 1) -> tuple[float, float]:
    """Wall and CPU seconds of the fastest of `repeats` runs of MONAI's sliding_window_inference alone on the
    preprocessed volume."""
    import torch
    from monai.inferers import sliding_window_inference

    from worker.models.networks import build_network
    from worker.models.preprocessing import Preprocessing, to_model_space
    from worker.models.training import load_weights

    torch.set_num_threads(THREADS)
    network = build_network("unet", NETWORK, len(STRUCTURES))
    load_weights(network, weights)
    network.eval()
    tensor, _info = to_model_space(volume, affine, Preprocessing(target_spacing=SPACING))
    batch = tensor.unsqueeze(0) if tensor.ndim == 4 else tensor
    times = []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            sliding_window_inference(batch, (96, 96, 96), 1, network, overlap=0.25, mode="gaussian")
        times.append((time.perf_counter() - started, time.process_time() - cpu_started))
    return min(times)


# Status polls are sparse: each one costs the API and PostgreSQL CPU that, on a small machine, the job being measured
# would otherwise have (the direct call runs with no poller). The end-to-end latency is read from the job's own
# finish timestamp, so it does not depend on the polling interval.
POLL_INTERVAL_S = 2.0


def _wait(client: httpx.Client, job_id: int, log_path: Path, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise BenchError(f"job {job_id} {job['status']}: {job['error']}\n{_tail(log_path)}")
            return dict(job)
        time.sleep(POLL_INTERVAL_S)
    raise BenchError(f"job {job_id} did not finish in {timeout} s\n{_tail(log_path)}")


def run() -> list[Row]:
    """Measure the pre-annotation overhead ratio and the CPU end-to-end latency."""
    from backend.imaging.nifti import to_nifti_gz
    from backend.imaging.phantom import generate_phantom

    redis_db = 1 + os.getpid() % 15
    redis.Redis(host="127.0.0.1", port=6379, db=redis_db).flushdb()
    broker = f"redis://127.0.0.1:6379/{redis_db}"
    previous_broker = os.environ.get("MASKLOOP_BROKER_URL")
    os.environ["MASKLOOP_BROKER_URL"] = broker
    phantom = generate_phantom(SHAPE, SPACING, seed=11)
    weights = _weights()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="maskloop-bench-") as tmp,
            pg_database(f"maskloop_bench_workers_{os.getpid()}") as url,
        ):
            workdir = Path(tmp)
            create_admin_and_project(url)
            with uvicorn_server(url, workdir) as (base, server_log), worker_process(url, workdir, broker) as log:
                client = httpx.Client(base_url=base, timeout=120)
                token = client.post("/api/auth/login", json={"email": EMAIL, "password": PASSWORD}).json()
                client.headers["Authorization"] = f"Bearer {token['access_token']}"
                project_id = client.get("/api/projects").json()[0]["id"]
                body = to_nifti_gz(phantom.volume, phantom.affine)
                scan_ids = []
                for i in range(WARM_RUNS + 1):
                    response = client.post(
                        f"/api/projects/{project_id}/scans",
                        files={"file": (f"bench-{i}.nii.gz", body, "application/gzip")},
                        data={"case_id": f"bench-{i}"},
                    )
                    scan_ids.append(_expect(response, 201, "import", server_log).json()["id"])
                model = client.post(
                    f"/api/projects/{project_id}/models",
                    json={
                        "name": "bench-unet",
                        "architecture": "unet",
                        "structures": STRUCTURES,
                        "config": NETWORK,
                        "preprocessing": {"target_spacing": list(SPACING)},
                        "inference": {"roi_size": [96, 96, 96], "overlap": 0.25},
                    },
                )
                model_id = _expect(model, 201, "register model", server_log).json()["id"]
                version = client.post(
                    f"/api/models/{model_id}/versions", files={"weights": ("w.pt", weights, "application/octet-stream")}
                )
                version_id = _expect(version, 201, "upload weights", server_log).json()["id"]
                _expect(client.post(f"/api/model-versions/{version_id}/promote"), 200, "promote", server_log)
                latencies, run_seconds, ratios, directs, cpu_ratios = [], [], [], [], []
                for i, scan_id in enumerate(scan_ids):
                    # Direct inference right before and right after each job, so the pair sees the machine as the
                    # job did even when its speed drifts (thermal, neighbours): one-sided pairs swung ±0.1.
                    before = _direct_seconds(phantom.volume, phantom.affine, weights) if i > 0 else (0.0, 0.0)
                    started = time.time()
                    jobs = client.post(
                        f"/api/projects/{project_id}/preannotate", json={"model": "bench-unet", "scan_ids": [scan_id]}
                    )
                    job = _wait(client, _expect(jobs, 201, "preannotate", server_log).json()[0]["id"], log)
                    # The API and the worker run on this machine: their clock is this clock.
                    elapsed = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00")).timestamp() - started
                    timings = ", ".join(f"{k} {v:.2f}" for k, v in job["result"]["timings"].items())
                    _log(f"job {i}: end to end {elapsed:.2f} s, run {job['run_seconds']:.2f} s ({timings})")
                    if i > 0:  # the first job pays for importing torch/monai in the worker process
                        after = _direct_seconds(phantom.volume, phantom.affine, weights)
                        direct_i, direct_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
                        latencies.append(elapsed)
                        run_seconds.append(float(job["run_seconds"]))
                        directs.append(direct_i)
                        ratios.append(float(job["run_seconds"]) / direct_i)
                        cpu_ratios.append(float(job["result"]["timings"].get("cpu_s", float("nan"))) / direct_cpu)
                        _log(
                            f"job {i}: direct sliding_window_inference {before[0]:.2f} s before, "
                            f"{after[0]:.2f} s after (cpu {direct_cpu:.2f} s), "
                            f"ratio {ratios[-1]:.3f}, cpu ratio of the job's stages {cpu_ratios[-1]:.3f}"
                        )
                client.close()
    finally:
        if previous_broker is None:
            os.environ.pop("MASKLOOP_BROKER_URL", None)
        else:
            os.environ["MASKLOOP_BROKER_URL"] = previous_broker
    direct = statistics.median(directs)
    ratio = statistics.median(ratios)
    e2e = statistics.median(latencies)
    _log(f"direct sliding_window_inference {direct:.2f} s; job run {statistics.median(run_seconds):.2f} s")
    return [
        Row(
            "preannotate_overhead_ratio",
            "pre-annotation job / direct sliding_window_inference",
            ratio,
            "x",
            "≤ 1.15",
            ratio <= 1.15,
        ),
        Row(
            "preannotate_overhead_cpu_ratio",
            "CPU time of the job's load+inference+write / of the direct call (robust to machine load)",
            statistics.median(cpu_ratios),
            "x",
        ),
        Row("preannotate_direct_swi_s", "direct sliding_window_inference, 256×256×128", direct, "s"),
        Row("preannotate_job_run_s", "job run time in the worker (warm)", statistics.median(run_seconds), "s"),
        Row("preannotate_cpu_256_s", "end-to-end job latency, 256×256×128, CPU", e2e, "s"),
        Row(
            "preannotate_gpu_512_s",
            "end-to-end on GPU, 512×512×300 (no device lent to this run)",
            float("nan"),
            "s",
            "< 10",
        ),
    ]
