"""The weights check of an upload: build the model's network, load the state dict, run one forward pass.

The API stored the upload as a 'pending' model version and waits for this job (backend.flows.registry explains
the design); here the verdict is written: 'valid', or 'invalid' with a reason. A refusal is the check's result,
not the job's failure, so the job succeeds either way (only infrastructure errors fail or retry it).
"""

from __future__ import annotations

import time

import numpy as np

from backend.core.blobstore import BlobStore, get_blob_store
from backend.core.db import session_scope
from backend.core.errors import InvalidInput, NotFound
from backend.jobs import service as jobs
from backend.registry import service as registry
from worker.models import predictors
from worker.models.predictors import Hooks, ModelSpec, NetworkPredictor
from worker.models.weights_check import MAX_REASON, check_network_weights
from worker.pipelines import common
from worker.pipelines.predictors import spec_of

# The tiny volume a non-network predictor runs on: 16³ voxels of 4 mm, soft tissue with a brighter core.
_TINY_SHAPE = (16, 16, 16)
_TINY_SPACING = 4.0


def run(job_id: int) -> None:
    """Check one uploaded weights version and record the verdict."""
    common.run_claimed(job_id, _run)


def _tiny_volume() -> tuple[np.ndarray, np.ndarray]:
    volume = np.full(_TINY_SHAPE, 40.0, dtype=np.float32)
    volume[4:12, 4:12, 4:12] = 150.0
    affine = np.diag([_TINY_SPACING, _TINY_SPACING, _TINY_SPACING, 1.0])
    return volume, affine


def check(spec: ModelSpec, weights: bytes) -> str | None:
    """None when the weights load into the model's architecture and one forward pass runs; else the reason.

    A network architecture is built from the model's config with one output per structure and checked strictly
    (`worker.models.weights_check`). Another predictor is prepared with the weights and, when it defines
    ``check_forward(prepared, spec)``, that runs; otherwise it predicts a tiny volume, whose probabilities must
    have the model's channels and lie in [0, 1].
    """
    try:
        predictor = predictors.get(spec.architecture)
    except predictors.UnknownArchitecture as exc:
        return f"no predictor for architecture {spec.architecture!r} in this worker ({exc})"
    if isinstance(predictor, NetworkPredictor):
        try:
            network = predictor.build(spec.config, len(spec.structures))
        except (ValueError, TypeError, RuntimeError) as exc:
            return f"the model's config does not build a {spec.architecture} network: {exc}"
        return check_network_weights(network, weights, len(spec.structures))
    try:
        prepared = predictor.prepare(spec, weights)
        custom = getattr(predictor, "check_forward", None)
        if callable(custom):
            custom(prepared, spec)
            return None
        volume, affine = _tiny_volume()
        raw = predictor.predict(prepared, spec, volume, affine, Hooks())
        predictors.check_probabilities(predictor.postprocess(raw, spec), spec, volume.shape)
    except Exception as exc:  # any failure of foreign weights is the verdict, not a crash of the job
        reason = f"the weights do not run in the {spec.architecture} predictor ({type(exc).__name__}: {exc})"
        return reason[:MAX_REASON]
    return None


def _run(claimed: common.Claimed) -> None:
    blobs: BlobStore = get_blob_store()
    reporter = common.Reporter(claimed)
    with session_scope() as db:
        job = common.owned_job(db, claimed)
        if job.model_version_id is None:
            raise InvalidInput("the model version of this weights check was deleted")
        version = registry.get_model_version(db, job.model_version_id)
        if version.weights_status != "pending":  # a previous attempt wrote its verdict but died before finishing
            jobs.succeed(db, job, {"valid": version.weights_status == "valid", "model_version_id": version.id})
            return
        spec = spec_of(registry.get_model(db, version.model_id), version)
    reporter.update(10, f"checking {spec.name} v{spec.number} weights against {spec.architecture}", force=True)
    started = time.perf_counter()
    if not spec.weights_digest:
        reason: str | None = "the version has no weights file"
    else:
        try:
            reason = check(spec, blobs.get_bytes(spec.weights_digest))
        except NotFound:
            reason = "the weights file is missing from the blob store"
    seconds = time.perf_counter() - started
    with session_scope() as db:
        job = common.closing_job(db, claimed)
        version = registry.get_model_version(db, job.model_version_id or 0)
        valid = reason is None
        registry.record_weights_check(
            db,
            version,
            valid=valid,
            reason=reason or f"loads into {spec.architecture} with {len(spec.structures)} outputs and runs",
            job_id=job.id,
            seconds=seconds,
        )
        jobs.succeed(
            db,
            job,
            {"valid": valid, "reason": reason, "model_version_id": version.id, "seconds": round(seconds, 3)},
            message=f"weights {'valid' if valid else 'refused'}",
        )
