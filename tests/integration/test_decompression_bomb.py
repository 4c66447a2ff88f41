"""Decompression bombs against the API (issue 11 item 2): refused from the header, the process barely grows.

The bomb is built in the test: a valid NIfTI-1 header declaring 512x512x6200 int16 and a valid gzip stream of
3.25 GB of zeros (3 MB uploaded). It goes to a live uvicorn process on PostgreSQL; its RSS is read from /proc.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.core import decode_limits
from backend.core.config import Settings
from bench.hardening_decode import live_api, nifti_gzip_bomb, send_bombs
from tests.conftest import World

GROWTH_LIMIT_MIB = 256


@pytest.mark.slow
def test_three_parallel_bombs_are_refused_without_growing_the_api(tmp_path: Path) -> None:
    bomb = nifti_gzip_bomb()
    assert len(bomb) < 4 * 1024 * 1024
    with live_api(tmp_path, f"maskloop_test_bomb_{os.getpid()}") as api:
        result = send_bombs(api, bomb)
        log = api.log_path.read_text(errors="replace")
    # The masks must match the scan's 64x64x40 grid: refused from the header (422) with the sizes named.
    assert result.statuses == {"mask": 422, "combined": 422, "import": 413}, result.bodies
    assert "liver.nii.gz" in result.bodies["mask"] and "(512, 512, 6200)" in result.bodies["mask"]
    assert "(64, 64, 40)" in result.bodies["combined"]
    assert "bomb.nii.gz" in result.bodies["import"] and "(512, 512, 6200)" in result.bodies["import"]
    assert result.seconds < 10, result
    assert result.growth_mib <= GROWTH_LIMIT_MIB, (result, log[-2000:])


def _small_nii(shape: tuple[int, int, int]) -> bytes:
    return gzip.compress(nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4)).to_bytes(), mtime=0)


def test_busy_decode_slots_answer_503_with_retry_after(client: TestClient, world: World, settings: Settings) -> None:
    response = client.post(
        f"/api/projects/{world.project.id}/scans",
        headers=world.headers["lead"],
        files={"file": ("case.nii.gz", _small_nii((8, 8, 4)), "application/gzip")},
    )
    assert response.status_code == 201, response.text
    scan_id = response.json()["id"]
    decode_limits.enable_cap(1, 0.2)
    try:
        with decode_limits.heavy_decode("a test holding the only slot"):
            busy = client.post(
                f"/api/scans/{scan_id}/versions",
                headers=world.headers["annotator"],
                files={"files": ("liver.nii.gz", _small_nii((8, 8, 4)), "application/gzip")},
            )
        assert busy.status_code == 503, busy.text
        assert int(busy.headers["Retry-After"]) >= 1
        assert "liver.nii.gz" in busy.json()["detail"]
        # The slot is free again: the same save goes through.
        saved = client.post(
            f"/api/scans/{scan_id}/versions",
            headers=world.headers["annotator"],
            files={"files": ("liver.nii.gz", _small_nii((8, 8, 4)), "application/gzip")},
        )
        assert saved.status_code == 201, saved.text
    finally:
        decode_limits.install(settings)
