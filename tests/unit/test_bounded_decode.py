"""Bounded decoding (issue 11 item 2): headers are checked before decompressing, output never exceeds what they
declare, malformed streams are clear 4xx, and the per-process cap on concurrent heavy decodes."""

from __future__ import annotations

import contextlib
import gzip
import io
import threading
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from backend.core import decode_limits
from backend.core.errors import InvalidInput, PayloadTooLarge, ServiceUnavailable
from backend.imaging import bounded, chunks, dicom
from backend.imaging.nifti import Geometry, load_label_map_bytes, load_mask_with_values, load_nifti_bytes
from bench.hardening_decode import crc32_zeros, nifti_gzip_bomb

AFFINE = np.diag([0.8, 0.8, 1.0, 1.0])
MIB = 1 << 20


def _nii(data: np.ndarray, affine: np.ndarray = AFFINE) -> bytes:
    return bytes(nib.Nifti1Image(data, affine, dtype=data.dtype).to_bytes())


def _ramp(shape: tuple[int, int, int] = (16, 12, 10)) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """The issue's bomb: 3 MB of .nii.gz declaring 512x512x6200 int16 (3.25 GB of zeros)."""
    return nifti_gzip_bomb()


@pytest.fixture
def no_cap() -> Iterator[None]:
    decode_limits.disable_cap()
    yield
    decode_limits.disable_cap()


def _peak_mib(fn: Callable[[], object]) -> float:
    """Peak traced Python/numpy allocation (MiB) while `fn` runs (it may raise)."""
    tracemalloc.start()
    try:
        with contextlib.suppress(InvalidInput, PayloadTooLarge):
            fn()
        return tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()


# --- the bomb -------------------------------------------------------------------------------------------------


def test_bomb_builder_makes_valid_gzip_of_zeros() -> None:
    for start in (0, 0xDEADBEEF):
        for n in (0, 1, 5, 4097):
            assert crc32_zeros(start, n) == zlib.crc32(bytes(n), start)
    small = nifti_gzip_bomb((64, 64, 256))
    raw = gzip.decompress(small)  # the CRC and size trailer check out
    assert len(raw) == 352 + 64 * 64 * 256 * 2 and not any(raw[352:])


def test_bomb_scan_import_is_refused_from_the_header(bomb: bytes, no_cap: None) -> None:
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge) as err:
        load_nifti_bytes(bomb, "bomb.nii.gz", max_bytes=3072 * MIB, max_voxels=2 << 30)
    assert time.perf_counter() - started < 1.0
    assert "bomb.nii.gz" in err.value.message and "(512, 512, 6200)" in err.value.message
    assert err.value.details["declared_bytes"] == 512 * 512 * 6200 * 2
    with pytest.raises(PayloadTooLarge, match=r"1625292800 voxels; a scan may hold at most 1073741824"):
        load_nifti_bytes(bomb, "bomb.nii.gz", max_bytes=8 << 30, max_voxels=1 << 30)
    assert _peak_mib(lambda: load_nifti_bytes(bomb, "bomb.nii.gz", max_bytes=8 << 30, max_voxels=1 << 30)) < 16


def test_bomb_mask_is_refused_before_decompressing(bomb: bytes, no_cap: None) -> None:
    scan = Geometry.from_affine((64, 64, 40), AFFINE)
    with pytest.raises(InvalidInput, match=r"liver.nii.gz: mask shape \(512, 512, 6200\) does not match"):
        load_mask_with_values(bomb, scan, "liver.nii.gz")
    with pytest.raises(InvalidInput, match="does not match"):
        load_label_map_bytes(bomb, scan, "labels.nii.gz")
    assert _peak_mib(lambda: load_mask_with_values(bomb, scan, "liver.nii.gz")) < 16


def test_mask_with_a_different_affine_is_refused_before_decompressing(no_cap: None) -> None:
    scan = Geometry.from_affine((64, 64, 256), AFFINE)
    raw = gzip.decompress(nifti_gzip_bomb((64, 64, 256)))
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    header.set_sform(np.diag([0.9, 0.8, 1.0, 1.0]), code=1)
    header.set_qform(np.diag([0.9, 0.8, 1.0, 1.0]), code=1)
    shifted = gzip.compress(header.binaryblock + raw[348:])
    with pytest.raises(InvalidInput, match="mask affine differs"):
        load_mask_with_values(shifted, scan, "m.nii.gz")


def test_decoding_stops_at_the_declared_size() -> None:
    data = _ramp()
    plain = _nii(data)
    # More data than the header declares: refused, never decoded past one extra byte.
    with pytest.raises(InvalidInput, match="more data than its header declares"):
        load_nifti_bytes(gzip.compress(plain + bytes(10 * MIB)), "extra.nii.gz")
    with pytest.raises(InvalidInput, match="more data than its header declares"):
        load_nifti_bytes(plain + b"\x01", "extra.nii")
    # Less: truncated, with the sizes named.
    with pytest.raises(InvalidInput, match=r"short.nii.gz: file is truncated: voxel data needs 4192 bytes"):
        load_nifti_bytes(gzip.compress(plain[:-10]), "short.nii.gz")


def test_gzip_members_padding_garbage_truncation_and_corruption() -> None:
    data = _ramp()
    plain = _nii(data)
    # Concatenated members (RFC 1952) and zero padding after the last one are legal.
    members = gzip.compress(plain[:1000]) + gzip.compress(plain[1000:3000]) + gzip.compress(plain[3000:])
    assert np.array_equal(load_nifti_bytes(members, "m.nii.gz").data, data)
    assert np.array_equal(load_nifti_bytes(members + bytes(512), "m.nii.gz").data, data)
    with pytest.raises(InvalidInput, match=r"g.nii.gz: 9 byte\(s\) of trailing data after the gzip stream"):
        load_nifti_bytes(gzip.compress(plain) + b"trailing!", "g.nii.gz")
    packed = gzip.compress(plain)
    with pytest.raises(InvalidInput, match=r"t\.nii\.gz: the gzip stream is truncated"):
        load_nifti_bytes(packed[:-20], "t.nii.gz")
    broken = bytearray(packed)
    broken[-6] ^= 0xFF  # the size trailer
    with pytest.raises(InvalidInput, match=r"c\.nii\.gz: corrupt gzip stream"):
        load_nifti_bytes(bytes(broken), "c.nii.gz")
    # A second member that is itself garbage after its magic.
    with pytest.raises(InvalidInput, match="corrupt gzip stream"):
        load_nifti_bytes(packed + b"\x1f\x8bjunkjunkjunk", "c.nii.gz")


def test_values_big_endian_extensions_and_scaling_survive() -> None:
    data = _ramp().astype(">i2")
    image = nib.Nifti1Image(data, AFFINE, dtype=np.dtype(">i2"))
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"x" * 100))
    image.header.set_slope_inter(2.0, -5.0)
    loaded = load_nifti_bytes(gzip.compress(image.to_bytes()), "be.nii.gz")
    assert np.array_equal(loaded.data, data.astype(np.int32) * 2 - 5)
    assert loaded.data.dtype.isnative


def test_absurd_vox_offset_is_refused() -> None:
    raw = bytearray(_nii(_ramp()))
    raw[108:112] = np.float32(1e9).tobytes()  # vox_offset
    with pytest.raises(InvalidInput, match="vox_offset"):
        load_nifti_bytes(gzip.compress(bytes(raw)), "o.nii.gz")


def test_stream_never_produces_more_than_asked(bomb: bytes) -> None:
    stream = bounded.open_stream(bomb, "bomb.nii.gz")
    assert len(stream.read(352)) == 352
    assert len(stream.read(10 * MIB)) == 10 * MIB
    assert stream.position == 352 + 10 * MIB
    assert not stream.at_end()


def test_patch_boxes_are_bounded() -> None:
    box = np.zeros((7, 5, 3), bool)
    packed = chunks.encode_box(box, "u8+gzip")
    split = gzip.compress(bytes(50)) + gzip.compress(bytes(55))
    assert not chunks.decode_box(split, (7, 5, 3), "u8+gzip").any()
    with pytest.raises(InvalidInput, match="trailing data"):
        chunks.decode_box(packed + b"xx", (7, 5, 3), "u8+gzip")
    with pytest.raises(InvalidInput, match="needs 105"):
        chunks.decode_box(gzip.compress(bytes(4 * MIB), 1), (7, 5, 3), "u8+gzip")


# --- DICOM ----------------------------------------------------------------------------------------------------


def _slices(folder: Path, n: int) -> list[Path]:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    template = pydicom.dcmread(path)
    series = generate_uid()
    out = []
    for k in range(n):
        ds = template.copy()
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        target = folder / f"{k}.dcm"
        ds.save_as(target)
        out.append(target)
    return out


def test_dicom_series_over_the_limits_is_refused_before_decoding(tmp_path: Path, no_cap: None) -> None:
    files = _slices(tmp_path, 3)  # 3 x 128 x 128
    assert dicom.load_dicom_series(files).data.shape == (128, 128, 3)
    with pytest.raises(PayloadTooLarge, match="49152 voxels; a scan may hold at most 40000"):
        dicom.load_dicom_series(files, max_voxels=40_000)
    with pytest.raises(PayloadTooLarge, match="the limit is"):
        dicom.load_dicom_series(files, max_bytes=100_000)


def test_deflated_dicom_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    target = tmp_path / "deflated.dcm"
    ds.save_as(target, enforce_file_format=True)
    assert dicom.load_dicom_series([target]).data.shape == (128, 128, 1)
    monkeypatch.setattr(dicom, "_MAX_INFLATED_FILE_BYTES", 1000)
    with pytest.raises(PayloadTooLarge, match=r"deflated\.dcm: decompresses to more than"):
        dicom.load_dicom_series([target])


# --- the cap on concurrent heavy decodes ------------------------------------------------------------------------


def test_cap_is_a_no_op_unless_enabled(no_cap: None) -> None:
    with decode_limits.heavy_decode("a"), decode_limits.heavy_decode("b"):
        assert decode_limits.running() == 0


def test_cap_waits_a_bounded_time_then_answers_503(no_cap: None) -> None:
    decode_limits.enable_cap(1, 0.2)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with decode_limits.heavy_decode("first"):
            held.set()
            release.wait(5)

    worker = threading.Thread(target=hold)
    worker.start()
    try:
        assert held.wait(5)
        assert decode_limits.running() == 1
        started = time.perf_counter()
        with pytest.raises(ServiceUnavailable) as err, decode_limits.heavy_decode("second.nii.gz"):
            pass
        assert 0.15 < time.perf_counter() - started < 2
        assert "second.nii.gz" in err.value.message and err.value.details["retry_after"] >= 1
        # A waiter gets the slot as soon as it frees.
        release.set()
        with decode_limits.heavy_decode("third"):
            assert decode_limits.running() == 1
    finally:
        release.set()
        worker.join()
    assert decode_limits.running() == 0


def test_cap_is_taken_only_after_the_header_checks(bomb: bytes, no_cap: None) -> None:
    decode_limits.enable_cap(1, 0.05)
    with decode_limits.heavy_decode("busy"):
        # A refused header never waits for (nor needs) a slot.
        with pytest.raises(InvalidInput, match="does not match"):
            load_mask_with_values(bomb, Geometry.from_affine((8, 8, 8), AFFINE), "m.nii.gz")
        with pytest.raises(ServiceUnavailable):
            load_nifti_bytes(_nii(_ramp()), "ok.nii")
    assert load_nifti_bytes(_nii(_ramp()), "ok.nii").data.shape == (16, 12, 10)


def test_weights_zip_is_bounded_by_its_declared_sizes() -> None:
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data/0", bytes(2 * MIB))
        archive.writestr("archive/data.pkl", b"x" * 100)
    data = packed.getvalue()
    assert bounded.check_zip_declared(data, "weights", 4 * MIB) == 2 * MIB + 100
    with pytest.raises(PayloadTooLarge, match="weights: its zip directory declares 2 archive member"):
        bounded.check_zip_declared(data, "weights", MIB)
    with pytest.raises(InvalidInput, match="not a readable zip archive"):
        bounded.check_zip_declared(b"PK\x03\x04" + bytes(100), "weights", MIB)
