"""Tests for backend.imaging.dicom: series loading, slice sorting, HU scaling and RAS affines."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from backend.core.errors import InvalidInput
from backend.imaging.dicom import load_dicom_series

sitk = pytest.importorskip("SimpleITK")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ct_small() -> Dataset:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None, "pydicom's bundled CT_small.dcm is missing"
    return pydicom.dcmread(path)


def _explicit_vr_un_path() -> str:
    try:
        path = get_testdata_file("explicit_VR-UN.dcm", download=False)
    except Exception as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"pydicom-data's explicit_VR-UN.dcm is not available offline: {exc}")
    if path is None:
        pytest.skip("pydicom-data's explicit_VR-UN.dcm is not installed (pip install pydicom-data)")
    return str(path)


def _uncompressed_explicit_vr_un() -> Dataset:
    """The pydicom-data abdominal slice with its JPEG 2000 pixels decoded by SimpleITK (GDCM)."""
    path = _explicit_vr_un_path()
    ds = pydicom.dcmread(path)
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(path))[0]
    # Slope 1 / intercept 0 in this file, so SimpleITK's values are the stored values.
    assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = pixels.astype("<i2").tobytes()
    ds["PixelData"].VR = "OW"
    ds["PixelData"].is_undefined_length = False
    return ds


def _rotation(ax: float, az: float) -> np.ndarray:
    """Rotation about x by `ax` then about z by `az` (degrees), as a 3x3 matrix."""
    a, b = np.deg2rad(ax), np.deg2rad(az)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def write_series(
    folder: Path,
    template: Dataset,
    n: int,
    gap: float,
    *,
    iop: np.ndarray | None = None,
    origin: np.ndarray | None = None,
    series_uid: str | None = None,
    seed: int = 0,
    rescale: tuple[float, float] | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    columns: int | None = None,
) -> list[Path]:
    """Write `n` copies of `template` along the slice normal, shuffled names and instance numbers.

    Slice k (in ascending position along the normal) gets stored pixels template + 7*k so the
    order can be checked from the voxel values.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    base = template.pixel_array.astype(np.int16)
    if columns is not None:
        base = np.ascontiguousarray(base[:, :columns])
    cosines = np.asarray(iop if iop is not None else template.ImageOrientationPatient, dtype=float)
    normal = np.cross(cosines[:3], cosines[3:])
    start = np.asarray(origin if origin is not None else template.ImagePositionPatient, dtype=float)
    uid = series_uid or generate_uid()
    names = [f"IMG{v:04d}" for v in rng.sample(range(1000, 9999), n)]
    instance_numbers = rng.sample(range(1, n + 1), n)
    written = []
    for k in range(n):
        ds = copy.deepcopy(template)
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in cosines]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in start + k * gap * normal]
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = instance_numbers[k]
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        if pixel_spacing is not None:
            ds.PixelSpacing = list(pixel_spacing)
        ds.Rows, ds.Columns = base.shape
        ds.PixelData = (base + 7 * k).astype("<i2").tobytes()
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def sitk_reference(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Affine (RAS) and voxel array data[i, j, k] of a series read by SimpleITK."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    direction = np.array(img.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return LPS_TO_RAS @ lps, sitk.GetArrayFromImage(img).transpose(2, 1, 0)


def test_ct_small_single_slice() -> None:
    ds = _ct_small()
    vol = load_dicom_series(Path(str(ds.filename)))
    assert vol.data.shape == (128, 128, 1)
    assert vol.data.dtype == np.int16
    # pixel_array is [row, col]; our array is [col, row, slice]; HU = stored - 1024.
    np.testing.assert_array_equal(vol.data[:, :, 0], ds.pixel_array.T.astype(np.int16) - 1024)
    assert vol.data[5, 9, 0] == int(ds.pixel_array[9, 5]) - 1024
    ipp = [float(v) for v in ds.ImagePositionPatient]
    np.testing.assert_allclose(vol.geometry.affine[:3, 3], [-ipp[0], -ipp[1], ipp[2]], atol=1e-6)
    ps = 0.661468
    # Single slice: third spacing is the SliceThickness (5 mm).
    np.testing.assert_allclose(np.diag(vol.geometry.affine)[:3], [-ps, -ps, 5.0], atol=1e-6)
    assert vol.geometry.orientation == "LPS"
    assert vol.slice_thickness == 5.0
    assert vol.source_dtype == "int16"


def test_position_sort_and_sitk_agreement_axial(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    write_series(folder, _ct_small(), n=6, gap=2.5)
    vol = load_dicom_series(folder)
    ref_affine, ref_data = sitk_reference(folder)
    assert vol.data.shape == ref_data.shape == (128, 128, 6)
    np.testing.assert_allclose(vol.geometry.affine, ref_affine, atol=1e-4)
    np.testing.assert_array_equal(vol.data, ref_data)
    # Slices come out in position order: slice k holds template + 7k.
    base = vol.data[:, :, 0].astype(int)
    for k in range(6):
        np.testing.assert_array_equal(vol.data[:, :, k].astype(int) - base, 7 * k)
    assert vol.geometry.spacing == pytest.approx((0.661468, 0.661468, 2.5), abs=1e-5)
    # Spacing between slices (2.5) is reported separately from SliceThickness (5).
    assert vol.slice_thickness == 5.0


def test_anisotropic_non_square_pixels_match_sitk(tmp_path: Path) -> None:
    # PixelSpacing is [between rows, between columns]; i runs along a row (column index).
    rot = _rotation(-20.0, 35.0)
    iop = np.concatenate([rot[:, 0], rot[:, 1]])
    folder = tmp_path / "aniso"
    write_series(folder, _ct_small(), n=4, gap=3.0, iop=iop, pixel_spacing=(0.5, 0.8), columns=100)
    vol = load_dicom_series(folder)
    ref_affine, ref_data = sitk_reference(folder)
    assert vol.data.shape == ref_data.shape == (100, 128, 4)
    np.testing.assert_allclose(vol.geometry.affine, ref_affine, atol=1e-4)
    np.testing.assert_array_equal(vol.data, ref_data)
    assert vol.geometry.spacing == pytest.approx((0.8, 0.5, 3.0), abs=1e-5)
    stored = _ct_small().pixel_array
    assert vol.data[99, 3, 0] == int(stored[3, 99]) - 1024


def test_file_list_input_in_shuffled_order(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", _ct_small(), n=4, gap=3.0, seed=3)
    shuffled = list(reversed(paths))
    a = load_dicom_series(shuffled)
    b = load_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_allclose(a.geometry.affine, b.geometry.affine)
    base = a.data[:, :, 0].astype(int)
    np.testing.assert_array_equal(a.data[:, :, 3].astype(int) - base, 21)


def test_oblique_series_matches_sitk(tmp_path: Path) -> None:
    rot = _rotation(15.0, 10.0)
    iop = np.concatenate([rot[:, 0], rot[:, 1]])
    folder = tmp_path / "oblique"
    write_series(folder, _ct_small(), n=5, gap=1.25, iop=iop, origin=np.array([10.0, -20.0, 30.0]))
    vol = load_dicom_series(folder)
    ref_affine, ref_data = sitk_reference(folder)
    np.testing.assert_allclose(vol.geometry.affine, ref_affine, atol=1e-4)
    np.testing.assert_array_equal(vol.data, ref_data)
    # First voxel sits at the lowest slice position, converted LPS -> RAS.
    np.testing.assert_allclose(vol.geometry.affine[:3, 3], [-10.0, 20.0, 30.0], atol=1e-5)
    assert vol.geometry.spacing[2] == pytest.approx(1.25, abs=1e-5)


def test_abdominal_slice_series_matches_sitk(tmp_path: Path) -> None:
    template = _uncompressed_explicit_vr_un()
    # IOP [1,0,0, 0,-1,0]: rows run anterior, the normal points to the feet.
    assert [float(v) for v in template.ImageOrientationPatient] == [1, 0, 0, 0, -1, 0]
    folder = tmp_path / "abdomen"
    write_series(folder, template, n=3, gap=2.0, seed=7)
    vol = load_dicom_series(folder)
    ref_affine, ref_data = sitk_reference(folder)
    assert vol.data.shape == (512, 512, 3)
    np.testing.assert_allclose(vol.geometry.affine, ref_affine, atol=1e-4)
    np.testing.assert_array_equal(vol.data, ref_data)
    assert vol.geometry.orientation == "LAI"
    # Sorted along the normal (0,0,-1): first slice is the highest z = -121.
    np.testing.assert_allclose(vol.geometry.affine[:3, 3], [0.0, 0.0, -121.0], atol=1e-6)
    assert vol.data.min() == -1024
    assert vol.slice_thickness is None


def test_abdominal_single_slice_matches_sitk(tmp_path: Path) -> None:
    path = tmp_path / "one.dcm"
    ds = _uncompressed_explicit_vr_un()
    ds.SliceThickness = "2.5"
    ds.save_as(path, enforce_file_format=True)
    vol = load_dicom_series([path])
    ref_affine, ref_data = sitk_reference(tmp_path)
    np.testing.assert_array_equal(vol.data, ref_data)
    # In-plane columns and origin agree; one slice is as deep as its SliceThickness, along the normal (feet).
    np.testing.assert_allclose(vol.geometry.affine[:, [0, 1, 3]], ref_affine[:, [0, 1, 3]], atol=1e-6)
    np.testing.assert_allclose(vol.geometry.affine[:3, 2], [0.0, 0.0, -2.5], atol=1e-6)


def test_single_slice_without_thickness_or_spacing_is_refused_naming_the_file(tmp_path: Path) -> None:
    """Issue 17: the z spacing of a lone slice was silently the pixel spacing; now the file is named and refused."""
    ds = _ct_small()
    del ds.SliceThickness
    del ds.SpacingBetweenSlices
    path = tmp_path / "lonely_slice.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InvalidInput, match=r"lonely_slice\.dcm: a single slice needs SliceThickness or SpacingBetween"):
        load_dicom_series([path])
    # A series takes its spacing from the slice positions: no thickness needed there.
    write_series(tmp_path / "series", ds, n=3, gap=2.0)
    assert load_dicom_series(tmp_path / "series").geometry.spacing[2] == pytest.approx(2.0)


def test_single_slice_spacing_between_slices_comes_first(tmp_path: Path) -> None:
    ds = _ct_small()
    ds.SpacingBetweenSlices = "3.0"
    path = tmp_path / "one.dcm"
    ds.save_as(path, enforce_file_format=True)
    vol = load_dicom_series([path])
    assert vol.geometry.spacing[2] == pytest.approx(3.0)
    assert vol.slice_thickness == 5.0
    del ds.SpacingBetweenSlices
    ds.save_as(path, enforce_file_format=True)
    assert load_dicom_series([path]).geometry.spacing[2] == pytest.approx(5.0)


def test_series_keeps_its_source_identifiers_in_slice_order(tmp_path: Path) -> None:
    paths = write_series(tmp_path, _ct_small(), n=4, gap=2.0, series_uid="1.2.3.4", seed=5)
    vol = load_dicom_series(tmp_path)
    by_position = sorted((float(pydicom.dcmread(p).ImagePositionPatient[2]), p) for p in paths)
    assert vol.series_uid == "1.2.3.4"
    assert vol.study_uid == str(_ct_small().StudyInstanceUID)
    assert vol.instance_uids == tuple(str(pydicom.dcmread(p).SOPInstanceUID) for _, p in by_position)


def test_seg_in_a_series_points_to_the_label_import(tmp_path: Path) -> None:
    paths = write_series(tmp_path, _ct_small(), n=2, gap=1.0)
    ds = pydicom.dcmread(paths[0])
    ds.Modality = "SEG"
    ds.save_as(paths[0])
    with pytest.raises(InvalidInput, match="SEG object is not an image slice; import it as a label version"):
        load_dicom_series(tmp_path)


def test_compressed_original_decodes_or_explains(tmp_path: Path) -> None:
    original = Path(_explicit_vr_un_path())
    # The original lacks SliceThickness, which a lone slice needs: the same compressed file with one.
    ds = pydicom.dcmread(original)
    ds.SliceThickness = "1.0"
    path = tmp_path / original.name
    ds.save_as(path, enforce_file_format=True)
    try:
        vol = load_dicom_series([path])
    except InvalidInput as exc:
        # No JPEG 2000 decoder plugin installed for pydicom: the error names the cause.
        assert "JPEG 2000" in exc.message
        assert "cannot decode pixel data" in exc.message
        assert exc.details["file"] == "explicit_VR-UN.dcm"
    else:
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0].T
        np.testing.assert_array_equal(vol.data[:, :, 0], ref)


def test_rescale_slope_and_float_output(tmp_path: Path) -> None:
    write_series(tmp_path / "a", _ct_small(), n=2, gap=1.0, rescale=(2, -1000))
    ints = load_dicom_series(tmp_path / "a")
    stored = _ct_small().pixel_array.T.astype(int)
    assert ints.data.dtype == np.int16
    np.testing.assert_array_equal(ints.data[:, :, 0], stored * 2 - 1000)
    write_series(tmp_path / "b", _ct_small(), n=2, gap=1.0, rescale=(0.5, -1024.25))
    floats = load_dicom_series(tmp_path / "b")
    assert floats.data.dtype == np.float32
    np.testing.assert_allclose(floats.data[:, :, 1], (stored + 7) * 0.5 - 1024.25)


def test_mixed_series_rejected(tmp_path: Path) -> None:
    write_series(tmp_path / "mix", _ct_small(), n=3, gap=1.0, series_uid="1.2.3.4", seed=1)
    write_series(tmp_path / "mix" / "sub", _ct_small(), n=2, gap=1.0, series_uid="1.2.3.5", seed=2)
    with pytest.raises(InvalidInput, match="mixed series") as err:
        load_dicom_series(tmp_path / "mix")
    assert err.value.details["series"] == {"1.2.3.4": 3, "1.2.3.5": 2}
    assert "1.2.3.4 (3 files)" in err.value.message


def test_non_dicom_folder_rejected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "noise.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InvalidInput, match="none of the 2 file"):
        load_dicom_series(tmp_path)


def test_empty_folder_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="holds no files"):
        load_dicom_series(tmp_path)


def test_non_dicom_files_are_skipped(tmp_path: Path) -> None:
    write_series(tmp_path, _ct_small(), n=3, gap=1.0)
    (tmp_path / "README.txt").write_text("not dicom")
    assert load_dicom_series(tmp_path).data.shape == (128, 128, 3)


def test_duplicate_positions_rejected(tmp_path: Path) -> None:
    paths = write_series(tmp_path, _ct_small(), n=3, gap=1.0)
    ds = pydicom.dcmread(paths[2])
    ds.ImagePositionPatient = pydicom.dcmread(paths[1]).ImagePositionPatient
    ds.save_as(paths[2])
    with pytest.raises(InvalidInput, match="duplicate slice position"):
        load_dicom_series(tmp_path)


def test_missing_slice_rejected(tmp_path: Path) -> None:
    paths = write_series(tmp_path, _ct_small(), n=5, gap=1.0)
    paths[2].unlink()
    with pytest.raises(InvalidInput, match="not evenly spaced"):
        load_dicom_series(tmp_path)


def test_inconsistent_size_and_orientation_rejected(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "size", _ct_small(), n=3, gap=1.0)
    ds = pydicom.dcmread(paths[1])
    ds.Rows = 64
    ds.PixelData = ds.PixelData[: 64 * 128 * 2]
    ds.save_as(paths[1])
    with pytest.raises(InvalidInput, match="inconsistent slice size"):
        load_dicom_series(tmp_path / "size")

    paths = write_series(tmp_path / "iop", _ct_small(), n=3, gap=1.0)
    ds = pydicom.dcmread(paths[0])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(paths[0])
    with pytest.raises(InvalidInput, match="inconsistent ImageOrientationPatient"):
        load_dicom_series(tmp_path / "iop")


def test_slice_without_pixel_data_rejected(tmp_path: Path) -> None:
    paths = write_series(tmp_path, _ct_small(), n=2, gap=1.0)
    ds = pydicom.dcmread(paths[0])
    del ds.PixelData
    ds.save_as(paths[0])
    with pytest.raises(InvalidInput, match="no pixel data"):
        load_dicom_series(tmp_path)


def test_non_image_modality_rejected(tmp_path: Path) -> None:
    paths = write_series(tmp_path, _ct_small(), n=2, gap=1.0)
    ds = pydicom.dcmread(paths[0])
    ds.Modality = "RTSTRUCT"
    ds.save_as(paths[0])
    with pytest.raises(InvalidInput, match="RTSTRUCT object is not an image"):
        load_dicom_series(tmp_path)


def test_missing_position_rejected(tmp_path: Path) -> None:
    paths = write_series(tmp_path, _ct_small(), n=2, gap=1.0)
    ds = pydicom.dcmread(paths[1])
    del ds.ImagePositionPatient
    ds.save_as(paths[1])
    with pytest.raises(InvalidInput, match="missing ImagePositionPatient"):
        load_dicom_series(tmp_path)


def test_truncated_dicom_rejected(tmp_path: Path) -> None:
    paths = write_series(tmp_path, _ct_small(), n=2, gap=1.0)
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInput) as err:
        load_dicom_series(tmp_path)
    assert err.value.details["file"] == paths[0].name


def test_missing_file_in_list_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not found"):
        load_dicom_series([tmp_path / "nope.dcm"])
