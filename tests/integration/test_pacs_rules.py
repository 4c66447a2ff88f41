"""PACS rules that need no server: the host allow-list, the encrypted password, the series choice and phase rules,
the scan metadata of a header, and PS3.15 Basic Profile de-identification."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from backend.core.config import Settings
from backend.core.errors import InvalidInput
from backend.models import PacsSource
from backend.pacs.service import deid, sources, wado
from backend.pacs.service.client import HostNotAllowed, check_url, parse_allow_list
from backend.pacs.service.series import SeriesInfo, choose, phase_of, scan_metadata
from tests.orthanc import Patient, ct_series

ALLOWED = "pacs.example.org, 10.0.0.5:8042, [::1]:8042, bad:port:x"


def test_the_allow_list_admits_only_listed_hosts_and_ports() -> None:
    assert parse_allow_list(ALLOWED) == [("pacs.example.org", None), ("10.0.0.5", 8042), ("::1", 8042)]
    assert check_url("HTTPS://PACS.example.org/dicom-web/", ALLOWED) == "https://pacs.example.org/dicom-web"
    assert check_url("http://pacs.example.org:9999/x", ALLOWED) == "http://pacs.example.org:9999/x"
    assert check_url("http://10.0.0.5:8042/dicom-web", ALLOWED) == "http://10.0.0.5:8042/dicom-web"
    assert check_url("http://[::1]:8042/dw", ALLOWED) == "http://[::1]:8042/dw"
    for refused in (
        "http://10.0.0.5/dicom-web",  # port 80, not 8042
        "http://10.0.0.6:8042/",
        "http://pacs.example.org.evil.net/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:80/",
    ):
        with pytest.raises(HostNotAllowed):
            check_url(refused, ALLOWED)
    with pytest.raises(HostNotAllowed):
        check_url("http://pacs.example.org/", "")
    for malformed in (
        "ftp://pacs.example.org/",
        "pacs.example.org",
        "http://u:p@pacs.example.org/",
        "http://pacs.example.org/?a=1",
        "http://[zz/",
    ):
        with pytest.raises(InvalidInput):
            check_url(malformed, ALLOWED)


def test_the_password_is_encrypted_and_a_source_off_the_list_is_refused_when_used() -> None:
    settings = Settings(secret_key="k" * 40, pacs_allowed_hosts="pacs.example.org")
    token = sources.encrypt(settings, "hunter2")
    assert "hunter2" not in token and sources.decrypt(settings, token) == "hunter2"
    other = Settings(secret_key="z" * 40, pacs_allowed_hosts="pacs.example.org")
    with pytest.raises(InvalidInput, match="cannot be decrypted"):
        sources.decrypt(other, token)
    source = PacsSource(project_id=1, base_url="https://pacs.example.org/dw", username="u", secret=token, salt="s")
    assert sources.endpoint_of(source, settings).password == "hunter2"
    assert "hunter2" not in repr(sources.endpoint_of(source, settings))
    with pytest.raises(HostNotAllowed):
        sources.endpoint_of(source, Settings(secret_key="k" * 40, pacs_allowed_hosts="elsewhere.org"))


def _series(number: int, **kw: object) -> SeriesInfo:
    base: dict[str, object] = {
        "study_uid": "1.2",
        "series_uid": f"1.2.{number}",
        "modality": "CT",
        "number": number,
        "description": "",
        "instances": 100,
        "image_type": ("ORIGINAL", "PRIMARY", "AXIAL"),
        "axial": 1.0,
        "thickness": 2.0,
    }
    base.update(kw)
    return SeriesInfo(**base)  # type: ignore[arg-type]


def test_the_series_choice_rules() -> None:
    scout = _series(1, instances=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    arterial = _series(2, description="Abd 1.0 arterial", thickness=1.0, instances=300)
    venous_thick = _series(3, description="Abd 5mm portal venous", thickness=5.0)
    venous_thin = _series(4, description="Abd 1mm PV", thickness=1.0, instances=280)
    coronal = _series(5, description="cor venous", axial=0.0, thickness=0.5)
    mpr = _series(6, description="venous MPR", thickness=0.5, image_type=("DERIVED", "SECONDARY", "AXIAL"))
    dose = _series(7, modality="SR", description="Dose report")
    study = [scout, arterial, venous_thick, venous_thin, coronal, mpr, dose]
    assert choose(study) == arterial  # original thin axial with most slices, no phase asked
    assert choose(study, "venous") == venous_thin
    assert choose(study, "delay") == arterial  # no delayed series: the rules fall back
    assert choose([scout, coronal, dose]) is None
    assert scout.refusal() == "a localizer (scout) image" and dose.refusal() == "modality SR, not CT"
    assert coronal.refusal() == "not axial (reformatted or tilted slices)"
    assert _series(8, axial=None).refusal() == "no usable ImageOrientationPatient"
    assert [phase_of(t) for t in ("NATIVE 5mm", "Abd w/o contrast", "Arterial", "PORTAL", "Delayed 3min", "Abd")] == [
        "non-contrast", "non-contrast", "arterial", "venous", "delay", None,
    ]  # fmt: skip
    assert phase_of("Abdomen 1.0", "IOPAMIDOL") == "contrast"


def _slice() -> Dataset:
    volume = np.zeros((4, 4, 2), dtype=np.int16)
    return ct_series(volume, np.diag([1.0, 1.0, 2.0, 1.0]), Patient("PID-7"), study_uid=generate_uid(),
                     series_number=2, description="Abdomen portal venous", contrast="IOHEXOL")[0]  # fmt: skip


def test_deidentification_follows_the_basic_profile_and_keeps_the_retained_characteristics() -> None:
    original = _slice()
    original.OtherPatientIDs = "OLD-1"
    original.add_new(0x00091001, "LO", "private secret")
    original.ReferencedImageSequence = [Dataset()]
    original.ReferencedImageSequence[0].ReferencedSOPClassUID = CTImageStorage
    original.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"
    names = deid.Pseudonyms("project-salt")
    out = deid.deidentify(copy.deepcopy(original), names)
    assert out.PatientID == out.PatientName == names.patient("PID-7") and out.PatientID.startswith("R")
    for gone in ("OtherPatientIDs", "OperatorsName", "InstitutionAddress", "StationName", "DeviceSerialNumber",
                 "SeriesDescription", "StudyDescription"):  # fmt: skip
        assert gone not in out, gone
    assert out.AccessionNumber == "" and out.StudyDate == "" and out.PatientBirthDate == "" and out.StudyTime == ""
    assert out.ReferringPhysicianName == "" and out.ContrastBolusAgent == "CONTRAST"
    assert not [e for e in out if e.tag.is_private]
    # Retained: sex, age, institution name, maker; the image itself.
    assert (out.PatientSex, out.PatientAge, out.InstitutionName, out.Manufacturer) == (
        "F",
        "063Y",
        original.InstitutionName,
        "SIEMENS",
    )
    assert out.PixelData == original.PixelData and out.ImagePositionPatient == original.ImagePositionPatient
    # UIDs: replaced consistently (HMAC of the salt), registered ones kept, the file meta follows.
    assert out.StudyInstanceUID == names.uid(original.StudyInstanceUID) != original.StudyInstanceUID
    assert out.SOPInstanceUID == out.file_meta.MediaStorageSOPInstanceUID == names.uid(original.SOPInstanceUID)
    assert out.SOPClassUID == CTImageStorage and out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == names.uid("1.2.3.4")
    assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == CTImageStorage
    assert deid.Pseudonyms("other-salt").uid(original.StudyInstanceUID) != out.StudyInstanceUID
    assert out.PatientIdentityRemoved == "YES" and "113100" in {
        c.CodeValue for c in out.DeidentificationMethodCodeSequence
    }
    burned = _slice()
    burned.BurnedInAnnotation = "YES"
    with pytest.raises(InvalidInput, match="burned-in"):
        deid.deidentify(burned, names)


def test_scan_metadata_maps_site_maker_sex_age_and_phase() -> None:
    header = _slice()
    raw = scan_metadata(header, header)
    assert raw["site"] == "Saint Example Hospital" and raw["manufacturer"] == "SIEMENS" and raw["sex"] == "F"
    assert raw["age"] == "63" and raw["phase"] == "venous" and raw["dicom PatientID"] == "PID-7"
    del header.PatientAge
    assert scan_metadata(header, header)["age"] == "63"  # from the birth and study dates
    cleaned = deid.deidentify(copy.deepcopy(header), deid.Pseudonyms("s"))
    raw = scan_metadata(header, cleaned)
    assert raw["phase"] == "venous" and raw["site"] == "Saint Example Hospital"  # read from the original header
    assert raw["dicom PatientID"].startswith("R") and "dicom AccessionNumber" not in raw


def test_a_multipart_answer_is_split_into_its_parts_however_it_is_chunked(tmp_path: Path) -> None:
    bodies = [b"first part \r\n with CRLFs \r\n--almost", b"", b"\x00" * 5000 + b"--b0undary-ish"]
    boundary = b"b0undary"
    message = b"preamble text\r\n" + b"".join(
        b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + body + b"\r\n" for body in bodies
    )
    message += b"--" + boundary + b"--\r\nepilogue"
    for size in (1, 3, 7, 64, 100_000):
        got: list[bytearray] = []

        def open_part(got: list[bytearray] = got) -> Callable[[bytes], object]:
            got.append(bytearray())
            return got[-1].extend

        chunks = iter([message[i : i + size] for i in range(0, len(message), size)])
        assert wado.split_parts(chunks, boundary, open_part) == 3
        assert [bytes(b) for b in got] == bodies, size
    with pytest.raises(wado.MultipartError):
        wado.split_parts(iter([message[:40]]), boundary, lambda: lambda data: None)
    # A part stored without the PS3.10 preamble (it starts with the file meta group) gets it back.
    dataset = _slice()
    path = tmp_path / "x.dcm"
    dataset.save_as(path, enforce_file_format=True)
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(path.read_bytes()[132:])
    wado._as_part10(bare)
    assert bare.read_bytes() == path.read_bytes()
