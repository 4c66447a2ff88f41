"""The loop simulation's moves through the real API: projects, scans, models, pre-annotation, attention, ranking,
reading masks, correcting, approving and training (``bench.loop`` composes them into rounds)."""

from __future__ import annotations

import gzip
import io
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np

from bench.worker_stack import Stack

Pair = tuple[int, str]
ROLES = ("lead", "annotator", "viewer")


@dataclass
class Clock:
    """Wall seconds per phase of the simulation (the profile printed with the figures)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to the phase."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def summary(self) -> str:
        """The phases, longest first."""
        return ", ".join(f"{k} {v:.0f} s" for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1]))


def ok(response: Any, status: int = 200) -> Any:
    """The JSON of a response, or an error naming it."""
    if response.status_code != status:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response.json()


def wait_all(stack: Stack, job_ids: list[int], timeout: float) -> list[dict[str, Any]]:
    """Wait for every job; fail naming the first that did not succeed."""
    done = []
    for job_id in job_ids:
        job = stack.wait_job(job_id, timeout=timeout)
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
        done.append(job)
    return done


def new_project(stack: Stack, name: str) -> int:
    """A project with the stack's lead, annotator and viewer as members (one per cohort)."""
    from backend.models import User
    from backend.projects import service as projects

    with stack.factory() as db:
        users = {u.email.split("@")[0]: u for u in db.query(User).all()}
        project = projects.create_project(db, name, name.title(), users["admin"])
        for role in ROLES:
            projects.set_membership(db, project.id, users[role], role, users["admin"])
        db.commit()
        return int(project.id)


def upload_scan(stack: Stack, project: int, case: str, volume: np.ndarray, affine: np.ndarray) -> int:
    """Import one scan as a NIfTI upload; its id."""
    from backend.imaging.nifti import to_nifti_gz

    scan = ok(
        stack.client.post(
            f"/api/projects/{project}/scans",
            headers=stack.headers["lead"],
            files={"file": (f"{case}.nii.gz", to_nifti_gz(volume, affine), "application/gzip")},
            data={"case_id": case},
        ),
        201,
    )
    return int(scan["id"])


def register_model(stack: Stack, project: int, name: str, body: dict[str, Any], weights: bytes) -> tuple[int, int]:
    """Register a model, upload its weights (the worker checks them) and promote them: (model id, version id)."""
    lead = stack.headers["lead"]
    model = ok(stack.client.post(f"/api/projects/{project}/models", headers=lead, json={"name": name, **body}), 201)
    version = ok(
        stack.client.post(
            f"/api/models/{model['id']}/versions",
            headers=lead,
            files={"weights": (f"{name}.pt", weights, "application/octet-stream")},
        ),
        201,
    )
    ok(stack.client.post(f"/api/model-versions/{version['id']}/promote", headers=lead))
    return int(model["id"]), int(version["id"])


def preannotate(stack: Stack, project: int, versions: list[int], scan_ids: list[int]) -> None:
    """Pre-annotate the scans with each model version in turn (the last one's draft becomes the head)."""
    queued = []
    for version in versions:
        body = {"model_version_id": version, "scan_ids": scan_ids}
        jobs = ok(
            stack.client.post(f"/api/projects/{project}/preannotate", headers=stack.headers["lead"], json=body), 201
        )
        queued += [int(job["id"]) for job in jobs]
    wait_all(stack, queued, timeout=120 + 20 * len(scan_ids))


def attention(stack: Stack, project: int, versions: list[int], scan_ids: list[int]) -> None:
    """Compute the attention maps of the scans from the two model versions' latest predictions."""
    body = {"scan_ids": scan_ids, "model_version_ids": versions}
    jobs = ok(stack.client.post(f"/api/projects/{project}/attention", headers=stack.headers["lead"], json=body), 201)
    wait_all(stack, [int(job["id"]) for job in jobs], timeout=120 + 10 * len(scan_ids))


def priorities(stack: Stack, project: int) -> dict[Pair, float]:
    """The project's ranked (scan, structure) priorities, every page."""
    found: dict[Pair, float] = {}
    page = 1
    while True:
        params = {"page": page, "page_size": 500}
        body = ok(stack.client.get(f"/api/projects/{project}/priorities", headers=stack.headers["lead"], params=params))
        for item in body["items"]:
            found[(int(item["scan_id"]), str(item["structure"]))] = float(item["priority"])
        if page * 500 >= body["total"]:
            return found
        page += 1


def drafts(stack: Stack, model_version: int, scan_ids: list[int]) -> dict[int, int]:
    """Each scan's latest label version drafted by the model version."""
    from backend.models import LabelVersion

    wanted = set(scan_ids)
    with stack.factory() as db:
        rows = db.query(LabelVersion).filter(LabelVersion.author_model_version_id == model_version)
        return {int(v.scan_id): int(v.id) for v in rows.order_by(LabelVersion.id) if int(v.scan_id) in wanted}


def read_mask(stack: Stack, version_id: int, structure: str) -> np.ndarray:
    """One structure's mask of a label version, downloaded as NIfTI, as a boolean array."""
    response = stack.client.get(f"/api/versions/{version_id}/masks/{structure}", headers=stack.headers["lead"])
    if response.status_code != 200:
        raise RuntimeError(f"mask {structure} of version {version_id}: {response.status_code} {response.text}")
    with gzip.GzipFile(fileobj=io.BytesIO(response.content)) as handle:
        image = nib.Nifti1Image.from_bytes(handle.read())
    return np.asarray(image.dataobj) > 0


def approve_corrected(stack: Stack, scan_id: int, masks: dict[str, np.ndarray], affine: np.ndarray) -> int:
    """The annotator starts the task, saves the corrected masks as a human version and submits; the lead starts
    the review and approves that version. Returns the approved version id."""
    from backend.imaging.nifti import to_nifti_gz

    annotator, lead = stack.headers["annotator"], stack.headers["lead"]
    url = f"/api/scans/{scan_id}/transitions"
    ok(stack.client.post(url, headers=annotator, json={"action": "start"}))
    head = int(ok(stack.client.get(f"/api/scans/{scan_id}/task", headers=annotator))["head_version_id"])
    files = [
        ("files", (f"{n}.nii.gz", to_nifti_gz(m.astype(np.uint8), affine), "application/gzip"))
        for n, m in masks.items()
    ]
    data = {"kind": "human", "message": "corrected", "base_version_id": str(head)}
    version = ok(stack.client.post(f"/api/scans/{scan_id}/versions", headers=annotator, files=files, data=data), 201)
    ok(stack.client.post(url, headers=annotator, json={"action": "submit"}))
    ok(stack.client.post(url, headers=lead, json={"action": "start_review"}))
    review = {"version_id": int(version["id"]), "decision": "approve"}
    ok(stack.client.post(f"/api/scans/{scan_id}/reviews", headers=lead, json=review), 201)
    return int(version["id"])


def train(stack: Stack, project: int, model: int, body: dict[str, Any]) -> dict[str, Any]:
    """Launch a training round and wait for its result; the lead promotes the candidate when the gate passed."""
    lead = stack.headers["lead"]
    job = ok(stack.client.post(f"/api/projects/{project}/models/{model}/train", headers=lead, json=body), 201)
    [done] = wait_all(stack, [int(job["id"])], timeout=900)
    result = dict(done["result"])
    if result.get("promoted") is False and result.get("gate", {}).get("passed"):
        ok(stack.client.post(f"/api/model-versions/{result['model_version_id']}/promote", headers=lead))
        result["promoted"] = True
    return result
