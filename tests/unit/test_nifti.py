"""Tests for backend.imaging.nifti: loading, geometry, masks, label maps and writing."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from backend.core.errors import InvalidInput
from backend.imaging.nifti import (
    Geometry,
    ensure_gzip,
    load_label_map_bytes,
    load_mask_bytes,
    load_nifti_bytes,
    load_nifti_path,
    orientation_code,
    to_nifti_gz,
)


def _affine(rot_z_deg: float = 0.0, flip: tuple[int, int, int] = (1, 1, 1)) -> np.ndarray:
    """An affine with spacing (0.75, 0.9, 2.5), a rotation about z and optional axis flips."""
    t = np.deg2rad(rot_z_deg)
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = np.diag(flip) @ rot @ np.diag([0.75, 0.9, 2.5])
    aff[:3, 3] = [12.5, -40.0, 7.25]
    return aff


RAS = _affine()
LPS = _affine(flip=(-1, -1, 1))
OBLIQUE = _affine(rot_z_deg=20.0)
# Axis permutation: i -> inferior, j -> posterior, k -> left.
IPL = np.array([[0.0, 0.0, -1.5, 30.0], [0.0, -0.8, 0.0, 10.0], [-0.7, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 1.0]])


def _nifti_bytes(
    data: np.ndarray,
    affine: np.ndarray = RAS,
    *,
    gz: bool = True,
    slope: float | None = None,
    inter: float | None = None,
    sform_code: int = 1,
    qform_code: int = 1,
) -> bytes:
    img = nib.Nifti1Image(data, affine, dtype=data.dtype)
    img.header.set_sform(affine, code=sform_code)
    img.header.set_qform(affine, code=qform_code)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    raw = img.to_bytes()
    return gzip.compress(raw) if gz else raw


def _ramp(shape: tuple[int, ...] = (5, 6, 7), dtype: type = np.int16) -> np.ndarray:
    return (np.arange(int(np.prod(shape))).reshape(shape) - 50).astype(dtype)


@pytest.mark.parametrize(
    ("affine", "code"),
    [(RAS, "RAS"), (LPS, "LPS"), (OBLIQUE, "RAS"), (IPL, "IPL")],
    ids=["ras", "lps", "oblique20", "ipl"],
)
def test_geometry_round_trip(affine: np.ndarray, code: str) -> None:
    data = _ramp()
    vol = load_nifti_bytes(_nifti_bytes(data, affine))
    g = vol.geometry
    assert g.shape == (5, 6, 7)
    assert g.orientation == code
    np.testing.assert_allclose(g.affine, affine, atol=1e-5)
    expected_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    np.testing.assert_allclose(g.spacing, expected_spacing, atol=1e-5)
    np.testing.assert_array_equal(vol.data, data)
    assert vol.data.dtype == np.int16
    assert vol.slice_thickness is None
    # Written back and read again: same grid and values.
    again = load_nifti_bytes(to_nifti_gz(vol.data, g.affine))
    assert again.geometry.matches(g, atol_mm=1e-5)
    np.testing.assert_array_equal(again.data, data)
    # JSON round trip.
    restored = Geometry.from_json(json.loads(json.dumps(g.to_json())))
    assert restored == g
    assert restored.orientation == code


def test_oblique_rotation_preserved() -> None:
    vol = load_nifti_bytes(_nifti_bytes(_ramp(), OBLIQUE))
    first_col = vol.geometry.affine[:3, 0] / vol.geometry.spacing[0]
    assert np.rad2deg(np.arctan2(first_col[1], first_col[0])) == pytest.approx(20.0, abs=1e-4)
    assert vol.geometry.spacing == pytest.approx((0.75, 0.9, 2.5), abs=1e-5)


def test_sform_preferred_over_qform() -> None:
    data = _ramp()
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(LPS, code=1)
    hdr.set_sform(OBLIQUE, code=2)
    vol = load_nifti_bytes(nib.Nifti1Image(data, None, header=hdr).to_bytes(), name="x.nii")
    np.testing.assert_allclose(vol.geometry.affine, OBLIQUE, atol=1e-5)
    hdr.set_sform(OBLIQUE, code=0)
    vol = load_nifti_bytes(nib.Nifti1Image(data, None, header=hdr).to_bytes(), name="x.nii")
    np.testing.assert_allclose(vol.geometry.affine, LPS, atol=1e-5)


def test_scl_slope_inter_respected_int16() -> None:
    stored = np.array([[[0, 1], [100, 600]], [[-5, 7], [300, 1000]]], dtype=np.int16)
    vol = load_nifti_bytes(_nifti_bytes(stored, slope=2.0, inter=-1024.0))
    assert vol.source_dtype == "int16"
    assert vol.data.dtype == np.int16
    np.testing.assert_array_equal(vol.data, stored.astype(int) * 2 - 1024)
    assert vol.data[1, 1, 1] == 976


def test_scl_fractional_slope_gives_float32() -> None:
    stored = np.array([[[0, 1], [2, 3]]] * 2, dtype=np.int16)
    vol = load_nifti_bytes(_nifti_bytes(stored, slope=0.5, inter=0.25))
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, stored * 0.5 + 0.25)


def test_uint16_out_of_int16_range_stays_exact_float32() -> None:
    stored = np.full((2, 2, 2), 40000, dtype=np.uint16)
    stored[0, 0, 0] = 3
    vol = load_nifti_bytes(_nifti_bytes(stored))
    assert vol.source_dtype == "uint16"
    assert vol.data.dtype == np.float32
    assert vol.data[1, 1, 1] == 40000.0 and vol.data[0, 0, 0] == 3.0


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_dtypes(dtype: type) -> None:
    data: np.ndarray = np.arange(24).reshape(2, 3, 4).astype(dtype)
    vol = load_nifti_bytes(_nifti_bytes(data))
    assert vol.source_dtype == np.dtype(dtype).name
    assert vol.data.dtype == np.int16  # integral values in range
    np.testing.assert_array_equal(vol.data, np.arange(24).reshape(2, 3, 4))


def test_float_values_kept_as_float32() -> None:
    data = np.linspace(-1000.5, 500.25, 24, dtype=np.float64).reshape(2, 3, 4)
    vol = load_nifti_bytes(_nifti_bytes(data))
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, data, rtol=1e-6)


def test_nii_and_nii_gz_equivalent_regardless_of_name() -> None:
    data = _ramp()
    plain = _nifti_bytes(data, LPS, gz=False)
    packed = _nifti_bytes(data, LPS, gz=True)
    a = load_nifti_bytes(plain, name="scan.nii.gz")  # misleading name: detected by magic bytes
    b = load_nifti_bytes(packed, name="scan.nii")
    np.testing.assert_array_equal(a.data, b.data)
    assert a.geometry == b.geometry
    assert a.header_pixdim == pytest.approx((0.75, 0.9, 2.5))


def test_load_nifti_path(tmp_path: Path) -> None:
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(_nifti_bytes(_ramp(), IPL))
    vol = load_nifti_path(path)
    assert vol.geometry.orientation == "IPL"
    with pytest.raises(InvalidInput, match="not found"):
        load_nifti_path(tmp_path / "missing.nii.gz")


def test_big_endian_file() -> None:
    data = _ramp().astype(">i2")
    img = nib.Nifti1Image(data, RAS)
    hdr = img.header.as_byteswapped(">")
    big = nib.Nifti1Image(data, RAS, header=hdr)
    vol = load_nifti_bytes(big.to_bytes())
    np.testing.assert_array_equal(vol.data, _ramp())


def test_nifti2_accepted() -> None:
    data = _ramp()
    img = nib.Nifti2Image(data, LPS)
    vol = load_nifti_bytes(gzip.compress(img.to_bytes()))
    assert vol.geometry.orientation == "LPS"
    np.testing.assert_array_equal(vol.data, data)


def test_4d_with_singleton_fourth_dim_squeezed() -> None:
    data = _ramp((4, 5, 6, 1))
    vol = load_nifti_bytes(_nifti_bytes(data))
    assert vol.data.shape == (4, 5, 6)
    assert vol.geometry.shape == (4, 5, 6)
    np.testing.assert_array_equal(vol.data, data[..., 0])


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 6, 2), (4, 5, 6, 1, 3), (4, 5, 6, 2, 1)])
def test_wrong_dimensionality_rejected(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInput) as err:
        load_nifti_bytes(_nifti_bytes(_ramp(shape)), name="bad.nii.gz")
    assert err.value.message == f"bad.nii.gz: expected a 3D volume, got shape {shape}"


def test_zero_sized_dimension_rejected() -> None:
    raw = bytearray(_nifti_bytes(_ramp(), gz=False))
    # dim[2] lives at byte 44 (int16 dim[8] starts at 40).
    raw[44:46] = np.int16(0).tobytes()
    with pytest.raises(InvalidInput, match=r"must be >= 1|invalid NIfTI header"):
        load_nifti_bytes(bytes(raw))


def test_truncated_gzip_rejected() -> None:
    packed = _nifti_bytes(_ramp((20, 20, 20)))
    with pytest.raises(InvalidInput, match="gzip stream is truncated"):
        load_nifti_bytes(packed[: len(packed) // 2])


def test_truncated_plain_nifti_rejected() -> None:
    plain = _nifti_bytes(_ramp(), gz=False)
    with pytest.raises(InvalidInput, match=r"file is truncated: voxel data needs 772 bytes, the file holds 700"):
        load_nifti_bytes(plain[:700])
    with pytest.raises(InvalidInput, match="too short to hold a NIfTI header"):
        load_nifti_bytes(plain[:100])


def test_corrupt_gzip_rejected() -> None:
    packed = bytearray(_nifti_bytes(_ramp((20, 20, 20))))
    packed[-8] ^= 0xFF  # break the CRC
    with pytest.raises(InvalidInput, match="corrupt gzip stream"):
        load_nifti_bytes(bytes(packed))


@pytest.mark.parametrize("payload", [np.random.default_rng(1).bytes(2048), b"\x1f\x8b" + b"junk" * 50])
def test_random_bytes_rejected(payload: bytes) -> None:
    with pytest.raises(InvalidInput, match=r"upload\.nii"):
        load_nifti_bytes(payload, name="upload.nii")


def test_empty_rejected() -> None:
    with pytest.raises(InvalidInput, match="the file is empty"):
        load_nifti_bytes(b"")


def test_analyze_pair_header_rejected() -> None:
    raw = bytearray(_nifti_bytes(_ramp(), gz=False))
    raw[344:348] = b"ni1\x00"
    with pytest.raises(InvalidInput, match=r"\.hdr/\.img pair"):
        load_nifti_bytes(bytes(raw))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(bad: float) -> None:
    data = np.zeros((3, 3, 3), dtype=np.float32)
    data[1, 2, 0] = bad
    data[0, 0, 0] = bad
    with pytest.raises(InvalidInput, match="2 NaN or infinite voxel"):
        load_nifti_bytes(_nifti_bytes(data))


def test_singular_affine_rejected() -> None:
    raw = bytearray(_nifti_bytes(_ramp(), gz=False, qform_code=0))
    for row_offset in (280, 296, 312):  # srow_x, srow_y, srow_z: 4 float32 each
        raw[row_offset + 8 : row_offset + 12] = np.float32(0.0).tobytes()
    with pytest.raises(InvalidInput, match="singular"):
        load_nifti_bytes(bytes(raw))


# --- masks and label maps -------------------------------------------------------------------


def _geometry(shape: tuple[int, int, int] = (5, 6, 7), affine: np.ndarray = RAS) -> Geometry:
    return load_nifti_bytes(_nifti_bytes(np.zeros(shape, np.int16), affine)).geometry


def test_mask_float_values_binarised() -> None:
    geom = _geometry()
    data = np.zeros((5, 6, 7), np.float32)
    data[1, 1, 1] = 0.9999
    data[2, 2, 2] = 1.0001
    data[3, 3, 3] = 0.5  # not > 0.5
    data[4, 4, 4] = 0.50001
    mask = load_mask_bytes(_nifti_bytes(data), geom, "liver.nii.gz")
    assert mask.dtype == np.bool_
    assert mask.shape == (5, 6, 7)
    assert mask[1, 1, 1] and mask[2, 2, 2] and mask[4, 4, 4]
    assert not mask[3, 3, 3]
    assert int(mask.sum()) == 3


def test_mask_uint8_and_scaled() -> None:
    geom = _geometry()
    data = np.zeros((5, 6, 7), np.uint8)
    data[0, 1, 2] = 1
    data[4, 5, 6] = 255
    mask = load_mask_bytes(_nifti_bytes(data), geom, "m.nii.gz")
    assert sorted(zip(*np.nonzero(mask), strict=True)) == [(0, 1, 2), (4, 5, 6)]
    # Stored 0/1 with slope 0.4: 0.4 is not > 0.5, so everything is outside.
    scaled = load_mask_bytes(_nifti_bytes(data.clip(0, 1), slope=0.4, inter=0.0), geom, "m.nii.gz")
    assert not scaled.any()


def test_mask_shape_mismatch_message() -> None:
    geom = _geometry((5, 6, 7))
    with pytest.raises(InvalidInput) as err:
        load_mask_bytes(_nifti_bytes(np.zeros((5, 6, 8), np.uint8)), geom, "spleen.nii.gz")
    assert err.value.message == ("spleen.nii.gz: mask shape (5, 6, 8) does not match the scan shape (5, 6, 7)")
    assert err.value.details["mask_shape"] == [5, 6, 8]
    assert err.value.details["scan_shape"] == [5, 6, 7]


def test_mask_affine_mismatch_message() -> None:
    geom = _geometry()
    shifted = RAS.copy()
    shifted[2, 3] += 2.5
    with pytest.raises(InvalidInput) as err:
        load_mask_bytes(_nifti_bytes(np.zeros((5, 6, 7), np.uint8), shifted), geom, "aorta.nii.gz")
    assert "aorta.nii.gz: mask affine differs from the scan affine by up to 2.5 mm" in err.value.message
    assert err.value.details["max_abs_difference"] == pytest.approx(2.5)
    with pytest.raises(InvalidInput, match="mask orientation LPS, scan orientation RAS"):
        load_mask_bytes(_nifti_bytes(np.zeros((5, 6, 7), np.uint8), LPS), geom, "aorta.nii.gz")


def test_mask_affine_within_tolerance_accepted() -> None:
    geom = _geometry()
    nudged = RAS.copy()
    nudged[0, 3] += 5e-4
    mask = load_mask_bytes(_nifti_bytes(np.ones((5, 6, 7), np.uint8), nudged), geom, "m.nii.gz")
    assert mask.all()


def test_label_map_integral() -> None:
    geom = _geometry()
    data = np.zeros((5, 6, 7), np.float32)
    data[1, 2, 3] = 28.0
    data[0, 0, 0] = 3.0
    labels = load_label_map_bytes(_nifti_bytes(data), geom, "combined_labels.nii.gz")
    assert labels.dtype == np.uint8
    assert labels[1, 2, 3] == 28 and labels[0, 0, 0] == 3
    assert sorted(np.unique(labels).tolist()) == [0, 3, 28]
    big = np.zeros((5, 6, 7), np.int32)
    big[0, 0, 0] = 300
    assert load_label_map_bytes(_nifti_bytes(big), geom, "x").dtype == np.uint16


def test_label_map_non_integral_rejected() -> None:
    geom = _geometry()
    data = np.zeros((5, 6, 7), np.float32)
    data[2, 2, 2] = 2.5
    with pytest.raises(InvalidInput, match=r"1 non-integer voxel value\(s\), e\.g\. 2\.5"):
        load_label_map_bytes(_nifti_bytes(data), geom, "labels.nii.gz")


def test_label_map_negative_rejected() -> None:
    geom = _geometry()
    data = np.zeros((5, 6, 7), np.int16)
    data[0, 0, 0] = -1
    with pytest.raises(InvalidInput, match="negative label -1"):
        load_label_map_bytes(_nifti_bytes(data), geom, "labels.nii.gz")


# --- writing -----------------------------------------------------------------------------------


def test_to_nifti_gz_header_and_dtypes() -> None:
    mask = np.zeros((4, 5, 6), dtype=bool)
    mask[1, 2, 3] = True
    blob = to_nifti_gz(mask, OBLIQUE)
    assert blob[:2] == b"\x1f\x8b"
    img = nib.Nifti1Image.from_bytes(gzip.decompress(blob))
    hdr = img.header
    assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
    assert hdr.get_xyzt_units()[0] == "mm"
    assert hdr.get_data_dtype() == np.uint8
    np.testing.assert_allclose(hdr.get_sform(), OBLIQUE, atol=1e-5)
    np.testing.assert_allclose(hdr.get_qform(), OBLIQUE, atol=1e-5)
    assert np.asarray(img.dataobj)[1, 2, 3] == 1 and int(np.asarray(img.dataobj).sum()) == 1

    labels64 = np.arange(120, dtype=np.int64).reshape(4, 5, 6) * 100
    img64 = nib.Nifti1Image.from_bytes(gzip.decompress(to_nifti_gz(labels64, RAS)))
    assert img64.header.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(img64.dataobj), labels64)

    f32 = np.full((2, 2, 2), -1000.5, dtype=np.float32)
    assert load_nifti_bytes(to_nifti_gz(f32, RAS)).data[1, 1, 1] == np.float32(-1000.5)


def test_to_nifti_gz_deterministic_and_compresslevel() -> None:
    data = np.zeros((30, 30, 30), np.int16)
    assert to_nifti_gz(data, RAS) == to_nifti_gz(data, RAS)
    assert to_nifti_gz(data, RAS)[4:8] == b"\x00\x00\x00\x00"  # gzip MTIME zeroed: content-addressable
    assert len(to_nifti_gz(data, RAS, compresslevel=9)) < len(to_nifti_gz(data, RAS, compresslevel=0))


def test_to_nifti_gz_rejects_bad_affine() -> None:
    with pytest.raises(InvalidInput, match="must be 4x4"):
        to_nifti_gz(np.zeros((2, 2, 2)), np.eye(3))


def test_ensure_gzip() -> None:
    plain = _nifti_bytes(_ramp(), gz=False)
    packed = ensure_gzip(plain)
    assert packed[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed) == plain
    assert ensure_gzip(packed) is packed
    with pytest.raises(InvalidInput, match="not a NIfTI file"):
        ensure_gzip(b"x" * 400)
    with pytest.raises(InvalidInput, match="empty"):
        ensure_gzip(b"")


# --- geometry helpers --------------------------------------------------------------------------


def test_orientation_code() -> None:
    assert orientation_code(RAS) == "RAS"
    assert orientation_code(LPS) == "LPS"
    assert orientation_code(IPL) == "IPL"
    with pytest.raises(InvalidInput, match="singular"):
        orientation_code(np.diag([1.0, 0.0, 1.0, 1.0]))


def test_geometry_matches_tolerance_and_json_validation() -> None:
    g = Geometry.from_affine((5, 6, 7), RAS)
    near = RAS.copy()
    near[1, 3] += 0.01
    h = Geometry.from_affine((5, 6, 7), near)
    assert not g.matches(h)
    assert g.matches(h, atol_mm=0.02)
    assert not g.matches(Geometry.from_affine((5, 6, 8), RAS), atol_mm=10.0)
    assert g != h and g == Geometry.from_affine((5, 6, 7), RAS.copy())
    assert len({g, Geometry.from_affine((5, 6, 7), RAS.copy())}) == 1
    with pytest.raises(InvalidInput, match="'shape' must be a list of 3 integers"):
        Geometry.from_json({"shape": [5, 6], "affine": RAS.tolist()})
    with pytest.raises(InvalidInput, match="must be 4x4"):
        Geometry.from_json({"shape": [5, 6, 7], "affine": [[1, 0], [0, 1]]})
    with pytest.raises(InvalidInput, match="'shape' and 'affine'"):
        Geometry.from_json({"shape": [5, 6, 7]})
    assert g.affine.flags.writeable is False


def test_gzip_bomb_is_refused_before_inflating_it_all() -> None:
    from backend.core.errors import PayloadTooLarge

    bomb = gzip.compress(_nifti_bytes(np.zeros((128, 128, 64), np.int16), gz=False))
    with pytest.raises(PayloadTooLarge, match="declares"):
        load_nifti_bytes(bomb, "bomb.nii.gz", max_bytes=1024 * 1024)
