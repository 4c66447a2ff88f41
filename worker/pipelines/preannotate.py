"""Pre-annotation: one model version on one scan -> a `model` label version plus probability/entropy maps."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore, get_blob_store
from backend.core.db import session_scope
from backend.core.errors import Conflict, InvalidInput
from backend.imaging import nifti
from backend.jobs import service as jobs
from backend.labels import service as labels
from backend.models import LabelVersion, Scan
from backend.projects import service as projects
from backend.registry import service as registry
from backend.scans import service as scans
from worker.models.maps import entropy_u8, quantise_probabilities
from worker.pipelines import common
from worker.pipelines.predictors import ModelSpec, predict


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
        spec = ModelSpec.of(model, version)
        image_digest, base_version_id, case_id = scan.image_digest, scan.head_version_id, scan.case_id
    reporter = common.Reporter(claimed)
    reporter.update(1, f"loading {case_id}", force=True)
    clock = time.perf_counter()
    timings: dict[str, float] = {}
    loaded = nifti.load_nifti_bytes(blobs.get_bytes(image_digest), f"{case_id}.nii.gz")
    timings["load_s"] = time.perf_counter() - clock
    if min(loaded.geometry.shape) < 2:
        raise InvalidInput(f"scan {case_id} of shape {list(loaded.geometry.shape)} is too thin for 3D inference")
    probs = predict(
        spec,
        blobs,
        loaded.data,
        loaded.geometry.affine,
        progress=reporter.fraction_callback(5, 90, f"{spec.name} v{spec.number}: sliding window"),
        should_stop=reporter.should_stop,
    )
    timings["inference_s"] = time.perf_counter() - clock - timings["load_s"]
    reporter.update(92, "writing the version", force=True)
    masks = probs > 0.5
    affine = loaded.geometry.affine
    # The soft maps are written on two threads (gzip and numpy release the GIL) while the version is built.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_write_maps, blobs, probs[i], affine) for i, name in enumerate(spec.structures)}
        with session_scope() as db:
            job = common.owned_job(db, claimed)
            scan = scans.get_scan(db, job.scan_id or 0)
            version = registry.get_model_version(db, job.model_version_id or 0)
            label_version = _write_version(db, scan, version.id, spec, masks, base_version_id, job.id)
            maps = {name: future.result() for name, future in futures.items()}
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
                    },
                },
                message=f"wrote version {label_version.id}",
            )


def _write_maps(blobs: BlobStore, probability: np.ndarray, affine: np.ndarray) -> dict[str, str]:
    """Store one structure's uint8 probability and entropy maps as .nii.gz blobs; returns their digests."""
    quantised = quantise_probabilities(probability)
    return {
        "probability": blobs.put_bytes(nifti.to_nifti_gz(quantised, affine)),
        "entropy": blobs.put_bytes(nifti.to_nifti_gz(entropy_u8(quantised), affine)),
    }


def _write_version(
    db: Session,
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
            return labels.create_version(db, get_blob_store(), scan, branch=False, **common_args)
    except Conflict:
        return labels.create_version(db, get_blob_store(), scan, branch=True, **common_args)
