"""Pre-annotation: one model version on one scan -> a `model` label version plus probability/entropy maps."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobInfo, BlobStore, get_blob_store, sha256_hex
from backend.core.db import session_scope
from backend.core.errors import Conflict, InvalidInput
from backend.imaging import nifti, softmaps
from backend.jobs import service as jobs
from backend.labels import service as labels
from backend.models import LabelVersion, Scan
from backend.projects import service as projects
from backend.registry import service as registry
from backend.scans import service as scans
from worker.models.maps import masks_of, quantise_stack
from worker.pipelines import common
from worker.pipelines.predictors import ModelSpec, predict, spec_of


def run(job_id: int) -> None:
    """Run (or finish, if a previous attempt already wrote it) the pre-annotation job."""
    common.run_claimed(job_id, _run)


def _run(claimed: common.Claimed) -> None:
    blobs = get_blob_store()
    with session_scope() as db:
        job = common.owned_job(db, claimed)
        existing = registry.prediction_for_job(db, job.id)
        if existing is not None:  # a previous attempt committed its version but died before finishing the job
            jobs.succeed(db, job, {"label_version_id": existing.label_version_id, "prediction_id": existing.id})
            return
        if job.scan_id is None:
            raise InvalidInput("the scan of this job was deleted")
        if job.model_version_id is None:
            raise InvalidInput("the model version of this job was deleted")
        scan = scans.get_scan(db, job.scan_id)
        version = registry.get_model_version(db, job.model_version_id)
        model = registry.get_model(db, version.model_id)
        schema = projects.structures_of(db, scan.project_id)
        for name in model.structures:
            projects.find_structure(schema, name)
        spec = spec_of(model, version)
        image_digest, base_version_id, case_id = scan.image_digest, scan.head_version_id, scan.case_id
    reporter = common.Reporter(claimed)
    reporter.update(1, f"loading {case_id}", force=True)
    clock, cpu_clock = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    loaded = nifti.load_nifti_bytes(blobs.get_bytes(image_digest), f"{case_id}.nii.gz")
    timings["load_s"] = time.perf_counter() - clock
    if min(loaded.geometry.shape) < 2:
        raise InvalidInput(f"scan {case_id} of shape {list(loaded.geometry.shape)} is too thin for 3D inference")
    with common.BackgroundProgress(reporter, 5, 90, f"{spec.name} v{spec.number}: sliding window") as progress:
        probs = predict(
            spec,
            blobs,
            loaded.data,
            loaded.geometry.affine,
            progress=progress,
            should_stop=reporter.should_stop,
            timings=timings,
        )
    timings["inference_s"] = time.perf_counter() - clock - timings["load_s"]
    reporter.update(92, "writing the version", force=True)
    # Thresholding and quantising every voxel of every structure are elementwise passes: torch runs them on all
    # the worker's threads, where numpy would use one core while the others idle.
    # The uint8 maps stay C-ordered: ``encode_soft_map`` stores such a map with its voxel axes reversed rather
    # than paying for a transposing copy here.
    masks = masks_of(probs)
    quantised = quantise_stack(probs, overwrite=True)
    del probs
    timings["maps_s"] = time.perf_counter() - clock - timings["load_s"] - timings["inference_s"]
    affine = loaded.geometry.affine
    # The soft maps are written on other threads (numpy, zlib and file writes release the GIL) while this thread
    # encodes the version's mask chunks, whose fsynced writes go to I/O threads; every write is finished before
    # the transaction that refers to the blobs commits. Both halves take about as long, so the maps get the cores
    # this thread leaves (on 2 cores one map thread: two would make three CPU-bound threads share them).
    map_threads = max(1, min(4, (os.cpu_count() or 2) - 1))
    with ThreadPoolExecutor(max_workers=map_threads) as pool, _WriteBehind(blobs) as behind:
        futures = {name: pool.submit(_write_map, blobs, quantised[i], affine) for i, name in enumerate(spec.structures)}
        with session_scope() as db:
            job = common.closing_job(db, claimed)
            scan = scans.get_scan(db, job.scan_id or 0)
            version = registry.get_model_version(db, job.model_version_id or 0)
            label_version = _write_version(db, behind, scan, version.id, spec, masks, base_version_id, job.id)
            maps = {name: future.result() for name, future in futures.items()}
            behind.wait()
            prediction = registry.record_prediction(
                db, job_id=job.id, scan=scan, model_version=version, label_version=label_version, maps=maps
            )
            jobs.succeed(
                db,
                job,
                {
                    "label_version_id": label_version.id,
                    "prediction_id": prediction.id,
                    "branch": label_version.is_branch,
                    "voxels": {name: int(np.count_nonzero(masks[i])) for i, name in enumerate(spec.structures)},
                    "timings": {
                        **timings,
                        "write_s": time.perf_counter() - clock - timings["load_s"] - timings["inference_s"],
                        # CPU seconds of this worker process (all threads) over the three stages: unlike the wall
                        # times it hardly moves when other processes compete for the cores.
                        "cpu_s": time.process_time() - cpu_clock,
                    },
                },
                message=f"wrote version {label_version.id}",
            )


def _write_map(blobs: BlobStore, quantised: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """Store one structure's uint8 probability map, cropped to its non-zero box; returns its digest and box.

    The entropy map is derived from it on read (``softmaps.entropy_u8``), so it is not stored twice.
    """
    encoded = softmaps.encode_soft_map(quantised, affine)
    return {"probability": blobs.put_bytes(encoded.data), **encoded.meta()}


class _WriteBehind:
    """A blob store view whose writes (temp file, fsync, rename) run on I/O threads while the caller computes.

    ``put_bytes`` returns the digest at once; ``exists`` and ``get_bytes`` see pending blobs; ``wait`` returns once
    every write is durable (re-raising a failed one) and must run before a row referring to them is committed.
    """

    def __init__(self, blobs: BlobStore, threads: int = 4) -> None:
        self._blobs = blobs
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="blob-write")
        self._pending: dict[str, Future[str]] = {}

    def __enter__(self) -> _WriteBehind:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)

    def put_bytes(self, data: bytes) -> str:
        """Queue a write; the digest is known at once."""
        digest = sha256_hex(data)
        if digest not in self._pending and not self._blobs.exists(digest):
            self._pending[digest] = self._pool.submit(self._blobs.put_bytes, data)
        return digest

    def exists(self, digest: str) -> bool:
        """Stored or queued."""
        return digest in self._pending or self._blobs.exists(digest)

    def _written(self, digest: str) -> str:
        if digest in self._pending:
            self._pending[digest].result()
        return digest

    def get_bytes(self, digest: str) -> bytes:
        """Read a blob, waiting for its write if it is queued."""
        return self._blobs.get_bytes(self._written(digest))

    def put_file(self, path: Path) -> str:
        """Store a file's content (synchronously)."""
        return self._blobs.put_file(path)

    def open(self, digest: str) -> BinaryIO:
        """Open a blob for streaming reads, once written."""
        return self._blobs.open(self._written(digest))

    def size(self, digest: str) -> int:
        """Size of a blob, once written."""
        return self._blobs.size(self._written(digest))

    def local_path(self, digest: str) -> Path | None:
        """The blob's file, once written."""
        return self._blobs.local_path(self._written(digest))

    def wait(self) -> None:
        """Block until every queued write is durable; a failed write raises here, before anything commits."""
        for future in self._pending.values():
            future.result()

    def iter_blobs(self) -> Iterator[BlobInfo]:
        """The underlying store's blobs (housekeeping; not used while writing)."""
        return self._blobs.iter_blobs()

    def delete(self, digest: str, *, older_than: float | None = None) -> bool:
        """Delete from the underlying store (housekeeping; not used while writing)."""
        return self._blobs.delete(digest, older_than=older_than)

    def remove_stale_temp(self, max_age_s: float) -> tuple[int, int]:
        """Clean the underlying store's temp files (housekeeping; not used while writing)."""
        return self._blobs.remove_stale_temp(max_age_s)


def _write_version(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    model_version_id: int,
    spec: ModelSpec,
    masks: np.ndarray,
    base_version_id: int | None,
    job_id: int,
) -> LabelVersion:
    """Save on the head the job started from; if a human saved meanwhile, keep the prediction as a branch."""
    common_args: dict[str, Any] = {
        "author": labels.Author(user_id=None, model_version_id=model_version_id),
        "kind": "model",
        "message": f"{spec.name} v{spec.number} pre-annotation (job {job_id})",
        "base_version_id": base_version_id,
        "masks": {name: masks[i] for i, name in enumerate(spec.structures)},
        "idempotency_key": f"job-{job_id}",
    }
    try:
        with db.begin_nested():
            return labels.create_version(db, blobs, scan, branch=False, **common_args)
    except Conflict:
        return labels.create_version(db, blobs, scan, branch=True, **common_args)
