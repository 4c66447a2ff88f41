"""The scan image of a de-identifying export: its NIfTI header's free text, extensions and gzip file name go; the
voxels, geometry and scaling stay byte for byte."""

from __future__ import annotations

import gzip
import io
from typing import Any, Literal

import nibabel as nib
import numpy as np
import pytest

from backend.core.errors import InvalidInput
from backend.exports.service.nifti_deid import without_free_text


def _named(kind: type[Any], endian: Literal["<", ">"]) -> tuple[bytes, np.ndarray, Any]:
    rng = np.random.default_rng(2)
    data = rng.integers(-1024, 2000, size=(7, 6, 5)).astype(np.dtype("int16").newbyteorder(endian))
    affine = np.array([[-0.8, 0, 0, 10], [0, 0.8, 0, -20], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    image = kind(data, affine)
    header = image.header
    if endian == ">":
        image = kind(data, affine, header.as_byteswapped(">"))
        header = image.header
    header["descrip"] = b"Smith John 19610315"
    header["aux_file"] = b"smith.txt"
    header["intent_name"] = b"J Smith"
    header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"PatientName=Smith^John"))
    raw = bytearray(image.to_bytes())
    # A scaling as scanners store it (nibabel resets it when writing integers): set in the written header.
    layout = type(header).template_dtype.newbyteorder(endian)
    written = np.frombuffer(bytes(raw[: layout.itemsize]), dtype=layout).copy()
    written["scl_slope"], written["scl_inter"] = 0.5, -3.0
    raw[: layout.itemsize] = written.tobytes()
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="Smith_John.nii", fileobj=buffer, mode="wb", mtime=0) as handle:
        handle.write(bytes(raw))
    return buffer.getvalue(), data, type(image).from_bytes(bytes(raw))


@pytest.mark.parametrize(("kind", "endian"), [(nib.Nifti1Image, "<"), (nib.Nifti1Image, ">"), (nib.Nifti2Image, "<")])
def test_free_text_extensions_and_the_gzip_name_go_the_volume_stays(kind: type[Any], endian: Literal["<", ">"]) -> None:
    original, data, image = _named(kind, endian)
    assert b"Smith" in original and b"Smith" in gzip.decompress(original)

    cleaned = without_free_text(original)

    assert b"Smith" not in cleaned and b"Smith" not in gzip.decompress(cleaned)
    back: Any = type(image).from_bytes(gzip.decompress(cleaned))
    assert back.header["descrip"].item() == b"" and back.header["intent_name"].item() == b""
    assert len(back.header.extensions) == 0
    assert back.header.endianness == image.header.endianness and back.get_data_dtype() == image.get_data_dtype()
    np.testing.assert_array_equal(np.asarray(back.dataobj.get_unscaled()), data)  # the stored values, unscaled
    assert (back.dataobj.slope, back.dataobj.inter) == (0.5, -3.0)  # the scaling, as loaded
    np.testing.assert_array_equal(back.affine, image.affine)
    # Cleaning is idempotent, and a file that is not gzip is cleaned alike.
    assert without_free_text(cleaned) == cleaned
    assert without_free_text(gzip.decompress(original)) == cleaned


def test_what_is_not_a_nifti_volume_is_refused() -> None:
    with pytest.raises(InvalidInput, match="not a single-file NIfTI"):
        without_free_text(gzip.compress(b"\x00" * 400))
    original, _, _ = _named(nib.Nifti1Image, "<")
    raw = bytearray(gzip.decompress(original))
    raw[108:112] = np.array([100.0], dtype="<f4").tobytes()  # vox_offset inside the header
    with pytest.raises(InvalidInput, match="impossible data offset"):
        without_free_text(bytes(raw))
