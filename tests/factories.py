"""Helpers that build small phantom scans and label versions through the real API."""

from __future__ import annotations

import io
import json
from typing import Any

import nibabel as nib
import numpy as np
from fastapi.testclient import TestClient

from backend.imaging import chunks
from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import Phantom, generate_phantom

SMALL_SHAPE = (64, 64, 32)
SMALL_SPACING = (3.0, 3.0, 6.0)


def small_phantom(seed: int = 0, orientation: str = "RAS", lesion: bool = True) -> Phantom:
    """A 64x64x32 phantom: big enough for every structure, small enough for fast tests."""
    return generate_phantom(SMALL_SHAPE, SMALL_SPACING, seed=seed, lesion=lesion, orientation=orientation)


def upload_scan(
    client: TestClient,
    headers: dict[str, str],
    project_id: int,
    phantom: Phantom,
    case_id: str,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Import a phantom's CT volume through the API and return the scan JSON."""
    data: dict[str, str] = {"case_id": case_id}
    if metadata is not None:
        data["metadata"] = json.dumps(metadata)
    response = client.post(
        f"/api/projects/{project_id}/scans",
        headers=headers,
        files={"file": (f"{case_id}.nii.gz", to_nifti_gz(phantom.volume, phantom.affine), "application/gzip")},
        data=data,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def upload_masks(
    client: TestClient,
    headers: dict[str, str],
    scan_id: int,
    masks: dict[str, np.ndarray],
    affine: np.ndarray,
    base_version_id: int | None = None,
    kind: str = "import",
    message: str = "ground truth",
) -> dict[str, Any]:
    """Create a version from per-structure masks through the API and return the version JSON."""
    files = [
        ("files", (f"{name}.nii.gz", to_nifti_gz(mask.astype(np.uint8), affine), "application/gzip"))
        for name, mask in masks.items()
    ]
    data: dict[str, str] = {"kind": kind, "message": message}
    if base_version_id is not None:
        data["base_version_id"] = str(base_version_id)
    response = client.post(f"/api/scans/{scan_id}/versions", headers=headers, files=files, data=data)
    assert response.status_code == 201, response.text
    return dict(response.json())


def post_patch(
    client: TestClient,
    headers: dict[str, str],
    scan_id: int,
    base_version_id: int | None,
    boxes: list[tuple[str, tuple[int, int, int], np.ndarray]],
    message: str = "brush",
    **extra: Any,
) -> Any:
    """Send a patch save (bit-packed gzip boxes) and return the raw response."""
    meta = {
        "base_version_id": base_version_id,
        "message": message,
        "patches": [
            {
                "structure": name,
                "origin": list(origin),
                "size": list(box.shape),
                "encoding": "bits+gzip",
                "part": f"b{i}",
            }
            for i, (name, origin, box) in enumerate(boxes)
        ],
        **extra,
    }
    files = {
        f"b{i}": (f"b{i}", chunks.encode_box(box), "application/octet-stream") for i, (_, _, box) in enumerate(boxes)
    }
    return client.post(
        f"/api/scans/{scan_id}/versions/patch", headers=headers, data={"meta": json.dumps(meta)}, files=files
    )


def read_mask(client: TestClient, headers: dict[str, str], version_id: int, structure: str) -> np.ndarray:
    """Download one structure's mask of a version as a boolean array."""
    response = client.get(f"/api/versions/{version_id}/masks/{structure}", headers=headers)
    assert response.status_code == 200, response.text
    image = nib.Nifti1Image.from_bytes(_gunzip(response.content))
    return np.asarray(image.dataobj) > 0


def read_nifti(content: bytes) -> nib.Nifti1Image:
    """Parse .nii.gz bytes returned by the API."""
    return nib.Nifti1Image.from_bytes(_gunzip(content))


def _gunzip(content: bytes) -> bytes:
    import gzip

    with gzip.GzipFile(fileobj=io.BytesIO(content)) as handle:
        return handle.read()
