"""The STOW job's parts that need no PACS: slice headers read from WADO-RS metadata (only what the SEG uses, the
first slice whole), a structure's mask read as the box of its chunks, and the streamed multipart body."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset

from backend.core.blobstore import LocalBlobStore
from backend.core.errors import InvalidInput
from backend.imaging import chunks, dicom_seg
from backend.imaging.phantom import generate_phantom
from backend.pacs.service import stow
from backend.pacs.service.client import Endpoint, _Multipart
from backend.pacs.service.series import from_json

SHAPE = (40, 36, 12)


class _Pacs:
    """A DICOMweb client stand-in answering the series' metadata request with DICOM JSON items."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def retrieve_series_metadata(self, study: str, series: str) -> list[dict[str, Any]]:
        return self.items


def _work(affine: np.ndarray, study: str, series: str) -> stow.StowWork:
    return stow.StowWork(
        job_id=1, project_id=1, scan_id=1, version_id=1, case_id="c", shape=SHAPE, affine=affine, image_digest="",
        endpoint=Endpoint("http://pacs.example"), allowed_hosts="pacs.example", manual=True,
        algorithm=("maskloop", "1"), segments=(), source_study_uid=study, source_series_uid=series,
        stored_series_uid=series, salt="s", deidentify=False,
    )  # fmt: skip


def _fixed(seg: Dataset) -> bytes:
    """The SEG's bytes with what highdicom draws from its clock and at random fixed."""
    for keyword in ("ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime"):
        setattr(seg, keyword, "")
    for item in seg.ContributingEquipmentSequence:
        item.ContributionDateTime = ""
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = "1.2.5"
    return dicom_seg.seg_to_bytes(seg)


def test_slice_headers_give_the_seg_the_full_headers_give() -> None:
    ph = generate_phantom(SHAPE, (2.0, 2.0, 4.0), seed=11)
    ct = dicom_seg.ct_series(ph.volume, ph.affine, dicom_seg.SeriesIds.derive("PID-7", "seed"))
    for ds in ct:  # what a scanner's header adds, which the SEG copies from the first slice
        ds.PatientSex, ds.PatientAge, ds.InstitutionName = "F", "063Y", "Saint Example Hospital"
    items = [ds.to_json_dict() for ds in ct]
    seg_item = {**items[0], "00080060": {"vr": "CS", "Value": ["SEG"]}}  # a SEG in the series is left out
    shuffled = [*items, seg_item]
    random.Random(3).shuffle(shuffled)
    work = _work(ph.affine, str(ct[0].StudyInstanceUID), str(ct[0].SeriesInstanceUID))

    headers = stow._source_headers(_Pacs(shuffled), work)

    assert [h.SOPInstanceUID for h in headers] == [ds.SOPInstanceUID for ds in ct]  # the scan's slice order
    assert headers[0].InstitutionName == "Saint Example Hospital" and "InstitutionName" not in headers[1]
    assert "PixelData" not in headers[0]
    segments = [(dicom_seg.SegmentSpec(name, "#ff0000"), ph.masks[name]) for name in ("liver", "pancreas")]

    def seg_of(source: list[Dataset]) -> bytes:
        seg = dicom_seg.segmentation(
            source, segments, manual=True, algorithm_name="", algorithm_version="", series_uid="1.2", sop_uid="1.3"
        )
        assert seg.PatientAge == "063Y"
        return _fixed(seg)

    whole = [from_json(item) for item in items]  # every header converted whole (DS values as JSON numbers)
    for header in whole:
        del header.PixelData
    assert seg_of(headers) == seg_of(whole)


def test_slice_headers_off_the_scans_grid_are_refused() -> None:
    ph = generate_phantom(SHAPE, (2.0, 2.0, 4.0), seed=11)
    ct = dicom_seg.ct_series(ph.volume, ph.affine, dicom_seg.SeriesIds.derive("PID-7", "seed"))
    items = [ds.to_json_dict() for ds in ct]
    work = _work(ph.affine, str(ct[0].StudyInstanceUID), str(ct[0].SeriesInstanceUID))
    with pytest.raises(InvalidInput, match="holds 11 slices"):
        stow._source_headers(_Pacs(items[1:]), work)
    moved = [dict(item) for item in items]
    moved[5] = {**moved[5], "00200032": {"vr": "DS", "Value": [0.0, 0.0, 999.0]}}
    with pytest.raises(InvalidInput, match="does not lie where"):
        stow._source_headers(_Pacs(moved), work)


@pytest.mark.parametrize("shape", [(70, 50, 130), (64, 64, 64), (9, 130, 7)])
def test_a_mask_is_read_as_the_box_of_its_chunks(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    blobs = LocalBlobStore(tmp_path)
    rng = np.random.default_rng(4)
    mask = np.zeros(shape, dtype=bool)
    region = tuple(slice(n * 2 // 3, n - 1) for n in shape)  # voxels in the far corner only
    mask[region] = rng.random(mask[region].shape) < 0.3
    mask[region][0, 0, 0] = True
    manifest = chunks.build_manifest(mask, blobs.put_bytes)
    digest = blobs.put_bytes(manifest.to_bytes())

    found = stow._mask_box(blobs, digest)

    assert found.shape == shape and found.box.flags.f_contiguous
    assert all(o % c == 0 for o, c in zip(found.origin, manifest.chunk, strict=True))  # chunk-aligned
    whole = np.zeros(shape, dtype=bool)
    i, j, k = found.origin
    whole[i : i + found.box.shape[0], j : j + found.box.shape[1], k : k + found.box.shape[2]] = found.box
    np.testing.assert_array_equal(whole, mask)
    if shape == (70, 50, 130):
        assert found.origin[2] == 64 and found.box.size < mask.size  # only the chunks holding voxels


def test_the_stow_body_streams_each_file_as_one_multipart_part() -> None:
    files = [b"\x00" * 128 + b"DICM" + bytes(range(256)) * 9000, b"second"]
    body = _Multipart(files, "b0undary")
    pieces = list(body)
    joined = b"".join(bytes(piece) for piece in pieces)
    expected = (
        b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + files[0] + b"\r\n"
        b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + files[1] + b"\r\n--b0undary--\r\n"
    )
    assert joined == expected and len(body) == len(expected)
    assert max(len(piece) for piece in pieces) <= 1 << 20 and len(pieces) > 3  # sent in slices, never joined
    assert any(piece.obj is files[0] for piece in pieces)  # views of the file's own bytes, not copies
