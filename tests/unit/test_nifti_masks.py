"""A mask file streamed into chunks: the same manifest, chunks, values and errors as decoding it whole."""

from __future__ import annotations

import gzip
import hashlib
import re

import nibabel as nib
import numpy as np
import pytest

from backend.core.errors import InvalidInput
from backend.imaging import chunks, nifti, nifti_masks
from backend.imaging.nifti import Geometry


class MemoryBlobs:
    """A dict-backed blob store."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def put(self, payload: bytes) -> str:
        digest = hashlib.sha256(payload).hexdigest()
        self.data[digest] = payload
        return digest


AFFINE = np.diag([0.8, 0.8, 1.5, 1.0])


def _file(values: np.ndarray, dtype: type = np.uint8, slope: float | None = None) -> bytes:
    image = nib.Nifti1Image(np.asarray(values, dtype=dtype), AFFINE)
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    return gzip.compress(image.to_bytes(), compresslevel=1)


def _masks(shape: tuple[int, int, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    blob = np.zeros(shape, dtype=np.uint8)
    blob[3 : shape[0] - 2, 7 : shape[1] // 2 + 5, 1 : shape[2] - 1] = 1
    noisy = blob | (rng.random(shape) < 0.01).astype(np.uint8)
    labels = noisy * rng.integers(1, 4, size=shape).astype(np.uint8)  # values 0..3: off {0, 1}, binarised
    labels[0, 0, 0] = 255
    full = np.ones(shape, dtype=np.uint8)
    return {"blob": blob, "noisy": noisy, "labels": labels, "empty": np.zeros(shape, np.uint8), "full": full}


@pytest.mark.parametrize("shape", [(130, 70, 137), (64, 64, 64), (17, 9, 5), (96, 128, 200), (64, 40, 75)])
def test_streamed_manifest_equals_the_whole_volume_path(shape: tuple[int, int, int]) -> None:
    geometry = Geometry.from_affine(shape, AFFINE)
    for label, values in _masks(shape, seed=sum(shape)).items():
        data = _file(values)
        whole, streamed = MemoryBlobs(), MemoryBlobs()
        mask, expected_values = nifti.load_mask_with_values(data, geometry, "m.nii.gz")
        expected = chunks.build_manifest(mask, whole.put)
        manifest, got_values = nifti_masks.mask_manifest(data, geometry, "m.nii.gz", streamed.put)
        assert manifest.to_bytes() == expected.to_bytes(), label
        assert streamed.data == whole.data, label
        assert got_values == expected_values, label
        assert manifest.voxel_count == int(np.count_nonzero(values)), label


def test_other_voxel_types_take_the_whole_volume_path_with_the_same_result() -> None:
    shape = (40, 33, 70)
    geometry = Geometry.from_affine(shape, AFFINE)
    values = _masks(shape, seed=3)["noisy"]
    for data in (_file(values, np.float32), _file(values, np.int16), _file(values * 2, np.uint8, slope=0.5)):
        whole, streamed = MemoryBlobs(), MemoryBlobs()
        mask, expected_values = nifti.load_mask_with_values(data, geometry, "m.nii.gz")
        expected = chunks.build_manifest(mask, whole.put)
        manifest, got_values = nifti_masks.mask_manifest(data, geometry, "m.nii.gz", streamed.put)
        assert manifest.to_bytes() == expected.to_bytes()
        assert got_values == expected_values


def test_bad_files_are_refused_as_the_whole_volume_path_refuses_them() -> None:
    shape = (40, 33, 70)
    geometry = Geometry.from_affine(shape, AFFINE)
    good = gzip.decompress(_file(_masks(shape, seed=5)["blob"]))
    cases = {
        "truncated": gzip.compress(good[: len(good) - 1000]),
        "trailing": gzip.compress(good + b"\x01" * 10),
        "wrong shape": _file(np.zeros((40, 33, 71), np.uint8)),
        "cut gzip": _file(_masks(shape, seed=5)["blob"])[:-300],
    }
    for label, data in cases.items():
        with pytest.raises(InvalidInput) as whole:
            nifti.load_mask_with_values(data, geometry, "m.nii.gz")
        stored = MemoryBlobs()
        with pytest.raises(InvalidInput) as streamed:
            nifti_masks.mask_manifest(data, geometry, "m.nii.gz", stored.put)
        # A cut gzip stream: the streamed path names how far it got (the whole path counts from the header).
        digits = re.compile(r"\d+ decoded bytes")
        assert digits.sub("N", streamed.value.message) == digits.sub("N", whole.value.message), label
