"""Click requests of the `interactive` queue: a warm model, cached volumes, one refine per message, a reply.

A worker of this queue keeps each model version it served loaded and warm (LRU by weights digest and config, at
most ``interactive_model_cache``) and each scan volume it read decoded (LRU by image digest, bounded by
``interactive_volume_cache_mb``), so a click costs the network pass and not a CT read. The message carries all
it needs (digests, clicks, the previous mask box): no database is touched. The answer (the structure's mask in
the region, bits+gzip, base64) or the refusal goes back through ``backend.interactive.service`` (Redis list or
reply file). A message whose caller has given up is dropped unrun.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.core.blobstore import get_blob_store
from backend.core.config import get_settings
from backend.core.errors import DomainError, NotFound
from backend.core.lru import BoundedLru
from backend.imaging import chunks, nifti
from backend.interactive import service
from worker.models.interactive import (
    ClicksOutOfVolume,
    InteractiveError,
    InteractiveRequest,
    LoadedInteractiveModel,
    TooManyClicks,
    UnknownStructure,
    WeightsMissing,
    load_interactive_model_bytes,
    refine,
)

log = logging.getLogger(__name__)

_ERROR_CODES: dict[type[InteractiveError], str] = {
    UnknownStructure: "unknown_structure",
    ClicksOutOfVolume: "clicks_out_of_volume",
    TooManyClicks: "too_many_clicks",
    WeightsMissing: "weights_missing",
}


@dataclass(frozen=True)
class Volume:
    """A decoded scan: voxels in storage order (HU), its affine and voxel size."""

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def nbytes(self) -> int:
        """Memory held by the voxels."""
        return int(self.data.nbytes)


_models: BoundedLru[Any] | None = None
_volumes: BoundedLru[Any] | None = None
_caches_lock = threading.Lock()


def caches() -> tuple[BoundedLru[Any], BoundedLru[Any]]:
    """This process's model and volume caches, sized by the settings at first use."""
    global _models, _volumes
    with _caches_lock:
        if _models is None or _volumes is None:
            settings = get_settings()
            _models = BoundedLru(settings.interactive_model_cache)
            _volumes = BoundedLru(1024, settings.interactive_volume_cache_mb * 1024 * 1024)
        return _models, _volumes


def _model(spec: dict[str, Any], timings: dict[str, float]) -> LoadedInteractiveModel:
    """The warm model of a version: cached, else read from the blob store, built and warmed once."""
    models, _ = caches()
    digest = str(spec["weights_digest"])
    key = json.dumps([digest, spec["config"], spec["structures"]], sort_keys=True)
    found = models.get(key)
    if found is not None:
        return found
    started = time.perf_counter()
    try:
        weights = get_blob_store().get_bytes(digest)
    except NotFound as exc:
        raise WeightsMissing(
            f"the weights of the interactive model {spec['name']!r} ({digest[:12]}…) are missing from the blob store"
        ) from exc
    threads = get_settings().torch_threads
    model = load_interactive_model_bytes(
        weights, spec["config"], spec["structures"], threads=threads if threads > 0 else None
    )
    models.put(key, model)
    timings["load_model_s"] = time.perf_counter() - started
    return model


def _volume(scan: dict[str, Any], timings: dict[str, float]) -> Volume:
    """The scan's decoded volume: cached by image digest, else read from the blob store once."""
    _, volumes = caches()
    digest = str(scan["image_digest"])
    found = volumes.get(digest)
    if found is None:
        started = time.perf_counter()
        loaded = nifti.load_nifti_bytes(get_blob_store().get_bytes(digest), f"{scan['case_id']}.nii.gz")
        affine = np.asarray(loaded.geometry.affine, dtype=np.float64)
        spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
        found = Volume(loaded.data, affine, (spacing[0], spacing[1], spacing[2]))
        volumes.put(digest, found, found.nbytes)
        timings["load_volume_s"] = time.perf_counter() - started
    if list(found.data.shape) != [int(v) for v in scan["shape"]]:
        raise service.WorkerFailure(
            f"the stored image of scan {scan['id']} has shape {found.data.shape}, not {scan['shape']}"
        )
    return found


def _previous(box: dict[str, Any] | None) -> tuple[np.ndarray | None, tuple[int, int, int]]:
    if not box:
        return None, (0, 0, 0)
    size = (int(box["size"][0]), int(box["size"][1]), int(box["size"][2]))
    origin = (int(box["origin"][0]), int(box["origin"][1]), int(box["origin"][2]))
    return chunks.decode_box(base64.b64decode(box["data"]), size, str(box["encoding"])), origin


def _bits_gzip(mask: np.ndarray) -> bytes:
    """A box as "bits+gzip" (chunks.decode_box reads it): one bit per voxel in NIfTI order, little-endian bits,
    gzip at level 1 (a click's box compresses well at once; level 6 costs tens of ms more) with no timestamp, so
    the same answer always has the same bytes."""
    bits = np.packbits(np.asarray(mask, dtype=bool).ravel(order="F"), bitorder="little")
    return gzip.compress(bits.tobytes(), compresslevel=1, mtime=0)


def _answer(message: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    """Refine one structure and encode its mask in the region as the reply."""
    volume = _volume(message["scan"], timings)
    model = _model(message["model"], timings)
    previous, origin = _previous(message.get("previous"))
    request = InteractiveRequest(
        image=volume.data,
        spacing=volume.spacing,
        affine=volume.affine,
        structure=str(message["structure"]),
        positive=message.get("positive", []),
        negative=message.get("negative", []),
        previous=previous,
        previous_origin=origin,
    )
    answer = refine(model, request)
    timings.update({k: v for k, v in answer.timings.items() if k != "total_s"})
    started = time.perf_counter()
    data = _bits_gzip(answer.mask)
    timings["encode_s"] = time.perf_counter() - started
    return {
        "ok": True,
        "structure": answer.structure,
        "origin": list(answer.origin),
        "size": [int(v) for v in answer.mask.shape],
        "encoding": service.ANSWER_ENCODING,
        "data": base64.b64encode(data).decode("ascii"),
        "voxels": int(np.count_nonzero(answer.mask)),
        "weights_sha256": model.weights_sha256,
    }


def _refusal(exc: BaseException) -> dict[str, Any]:
    """A reply reporting why the request was not answered: the caller's fault (4xx) or the worker's."""
    if isinstance(exc, InteractiveError):
        code = next((c for cls, c in _ERROR_CODES.items() if isinstance(exc, cls)), "invalid_request")
        return {"ok": False, "error": code, "message": str(exc)}
    if isinstance(exc, DomainError):
        return {"ok": False, "error": exc.code, "message": exc.message}
    return {"ok": False, "error": "internal", "message": f"{type(exc).__name__}: {exc}"}


def handle(message: dict[str, Any]) -> None:
    """Answer one message of the interactive queue (a click, or a warm-up that loads the model and the volume)."""
    received = time.time()
    request_id = service.check_request_id(message.get("request_id", ""))
    if received > float(message.get("expires_at", received + 1)):
        log.info("interactive request %s expired before it ran; dropped", request_id)
        return
    timings: dict[str, float] = {"queue_s": max(0.0, received - float(message.get("sent_at", received)))}
    started = time.perf_counter()
    if message.get("kind") == "warm":
        try:
            _volume(message["scan"], timings)
            _model(message["model"], timings)
        except Exception as exc:  # a warm-up is a hint: its failure is only logged
            log.warning("warming up for scan %s failed: %s", message.get("scan", {}).get("id"), exc)
        return
    try:
        reply = _answer(message, timings)
    except Exception as exc:
        if not isinstance(exc, InteractiveError | DomainError):
            log.exception("interactive request %s failed", request_id)
        reply = _refusal(exc)
    timings["worker_s"] = time.perf_counter() - started
    reply["timings"] = timings
    service.replies_for(get_settings()).send(request_id, reply)
