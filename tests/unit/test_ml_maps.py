"""Quantised probability and entropy maps, and how they are stored (cropped to their non-zero box)."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import zstandard

from backend.core.errors import InvalidInput
from backend.imaging.softmaps import entropy_u8
from worker.models.inference import binary_entropy, dequantise_unit, quantise_unit
from worker.models.maps import quantise_probabilities


def test_quantisation_matches_the_reference_and_bounds_the_error() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((3, 20, 20, 10), dtype=np.float32)
    q = quantise_probabilities(probs)
    assert q.dtype == np.uint8
    assert np.array_equal(q, quantise_unit(probs))
    assert np.abs(dequantise_unit(q) - probs).max() <= 1 / 510 + 1e-7


def test_entropy_lookup_equals_the_entropy_of_the_quantised_probability() -> None:
    q = np.arange(256, dtype=np.uint8)
    expected = quantise_unit(binary_entropy(dequantise_unit(q)))
    assert np.abs(entropy_u8(q).astype(int) - expected.astype(int)).max() <= 1
    assert entropy_u8(np.array([0, 255, 128], dtype=np.uint8)).tolist()[:2] == [0, 0]
    assert entropy_u8(np.array([128], dtype=np.uint8))[0] == 255


def test_the_api_knows_what_the_classical_model_finds() -> None:
    from backend.registry.service import CLASSICAL_STRUCTURES as API_SIDE
    from worker.models.classical import CLASSICAL_STRUCTURES as WORKER_SIDE

    assert tuple(API_SIDE) == tuple(WORKER_SIDE)


def _confident_map() -> np.ndarray:
    """A map of a sure model: 255 inside a box, a soft rim, 0 elsewhere."""
    q = np.zeros((40, 36, 24), dtype=np.uint8)
    q[10:25, 8:30, 5:15] = 255
    q[9, 8:30, 5:15] = 128
    q[25, 8:30, 5:15] = 3
    return q


AFFINE = np.array([[-2.0, 0, 0, 30.0], [0, -1.5, 0, 20.0], [0, 0, 3.0, -40.0], [0, 0, 0, 1]])


def test_soft_maps_are_cropped_losslessly_to_their_non_zero_box() -> None:
    from backend.imaging.softmaps import FORMAT, decode_soft_map, encode_soft_map

    q = np.asfortranarray(_confident_map())  # x-fastest, as NIfTI stores it (C order: see the reversed-axes test)
    encoded = encode_soft_map(q, AFFINE)
    assert encoded.origin == (9, 8, 5) and encoded.shape == (17, 22, 10) and encoded.scan_shape == q.shape
    assert encoded.data.startswith(b"\x28\xb5\x2f\xfd") and len(encoded.data) < q.size // 20  # zstd
    meta = encoded.meta()
    assert meta["format"] == FORMAT and meta["origin"] == [9, 8, 5]
    assert np.array_equal(decode_soft_map(encoded.data, meta), q)
    # The box's own affine places it in world space: its first voxel is the grid's voxel (9, 8, 5).
    image = nib.Nifti1Image.from_bytes(zstandard.ZstdDecompressor().decompress(encoded.data))
    assert image.shape == (17, 22, 10)
    np.testing.assert_allclose(image.affine[:3, 3], (AFFINE @ [9, 8, 5, 1])[:3], atol=1e-4)


def test_incompressible_maps_are_stored_raw_and_empty_maps_as_one_voxel() -> None:
    from backend.imaging.softmaps import decode_soft_map, encode_soft_map

    speckled = np.random.default_rng(1).integers(1, 256, size=(30, 20, 10), dtype=np.uint8)
    encoded = encode_soft_map(speckled, AFFINE)
    assert encoded.shape == (30, 20, 10) and encoded.meta()["compression"] == "zstd"
    assert np.array_equal(decode_soft_map(encoded.data, encoded.meta()), speckled)
    empty = encode_soft_map(np.zeros((30, 20, 10), dtype=np.uint8), AFFINE)
    assert empty.shape == (1, 1, 1)
    assert np.array_equal(decode_soft_map(empty.data, empty.meta()), np.zeros((30, 20, 10), dtype=np.uint8))
    with pytest.raises(InvalidInput):
        encode_soft_map(speckled.astype(np.float32), AFFINE)


def test_full_grid_maps_for_the_viewer_and_rows_written_before_cropping() -> None:
    from backend.imaging.nifti import to_nifti_gz
    from backend.imaging.softmaps import decode_soft_map, encode_soft_map, full_grid_nifti_gz

    q = _confident_map()
    encoded = encode_soft_map(q, AFFINE)
    for kind, expected in (("probability", q), ("entropy", entropy_u8(q))):
        image = nib.Nifti1Image.from_bytes(gzip.decompress(full_grid_nifti_gz(encoded.data, encoded.meta(), kind)))
        assert np.array_equal(np.asarray(image.dataobj), expected)
        np.testing.assert_allclose(image.affine, AFFINE, atol=1e-4)
    with pytest.raises(InvalidInput):
        full_grid_nifti_gz(encoded.data, encoded.meta(), "variance")
    legacy = to_nifti_gz(q, AFFINE)  # whole-grid .nii.gz, no box in the row
    assert np.array_equal(decode_soft_map(legacy, {"probability": "d", "entropy": "e"}), q)
    cropped_gzip = gzip.compress(zstandard.ZstdDecompressor().decompress(encoded.data), mtime=0)  # before zstd
    assert np.array_equal(decode_soft_map(cropped_gzip, encoded.meta()), q)
    cropped_raw = zstandard.ZstdDecompressor().decompress(encoded.data)
    assert np.array_equal(decode_soft_map(cropped_raw, encoded.meta()), q)
    with pytest.raises(InvalidInput):
        decode_soft_map(b"not a nifti at all" * 40, encoded.meta())


def test_quantising_a_stack_on_torch_threads_gives_the_same_values() -> None:
    from worker.models.maps import masks_of, quantise_stack

    probs = np.random.default_rng(2).random((3, 11, 9, 7), dtype=np.float32)
    probs[0, 0, 0, 0], probs[0, 1, 0, 0], probs[1, 0, 0, 0] = -0.2, 1.3, 0.5
    probs[2, 0, 0, 0] = 0.5 / 255.0  # exactly half a step: rounds half to even, like numpy
    expected_masks = probs > 0.5
    expected = quantise_probabilities(probs)
    out = quantise_stack(probs)
    assert out.dtype == np.uint8 and out.flags.c_contiguous and out.shape == probs.shape
    assert np.array_equal(out, expected)
    assert np.array_equal(masks_of(probs), expected_masks) and not masks_of(probs)[1, 0, 0, 0]
    assert np.array_equal(quantise_stack(probs, overwrite=True), expected)
    assert probs.max() > 1.0  # overwritten: the stack was used as scratch


def test_c_ordered_maps_are_stored_with_reversed_axes_and_read_back_in_place() -> None:
    from backend.imaging.softmaps import decode_soft_map, encode_soft_map, full_grid_nifti_gz

    q = np.ascontiguousarray(_confident_map())
    q[12, 20, 7] = 77  # one voxel that would land elsewhere if the axes were mixed up
    encoded = encode_soft_map(q, AFFINE)
    meta = encoded.meta()
    assert meta["axes"] == "zyx" and encoded.origin == (9, 8, 5) and encoded.shape == (17, 22, 10)
    assert np.array_equal(decode_soft_map(encoded.data, meta), q)
    # Any NIfTI reader sees a correct image: the stored voxel (z, y, x) sits where the grid's (x, y, z) does.
    image = nib.Nifti1Image.from_bytes(zstandard.ZstdDecompressor().decompress(encoded.data))
    assert image.shape == (10, 22, 17)
    stored = np.asarray(image.dataobj)
    assert stored[7 - 5, 20 - 8, 12 - 9] == 77
    np.testing.assert_allclose(image.affine @ [2, 12, 3, 1], AFFINE @ [12, 20, 7, 1], atol=1e-4)
    full = nib.Nifti1Image.from_bytes(gzip.decompress(full_grid_nifti_gz(encoded.data, meta, "probability")))
    assert np.array_equal(np.asarray(full.dataobj), q)
    np.testing.assert_allclose(full.affine, AFFINE, atol=1e-4)
    fortran = encode_soft_map(np.asfortranarray(q), AFFINE)  # already x-fastest: stored as is
    assert "axes" not in fortran.meta() and np.array_equal(decode_soft_map(fortran.data, fortran.meta()), q)
