"""A real PACS for tests: Debian's Orthanc with its DICOMweb plugin, started on a free 127.0.0.1 port with a
temporary storage folder and HTTP basic authentication, and a synthetic CT series written with pydicom.

`apt-get install -y orthanc orthanc-dicomweb` (.ci/run and `make test` do it). One server per test worker process
(the `orthanc` fixture in tests/conftest.py); tests keep apart by using their own patients and studies.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def available() -> str | None:
    """Why Orthanc cannot run here (None when it can)."""
    if not ORTHANC.exists() or not DICOMWEB_PLUGIN.exists():
        return "Orthanc is not installed: apt-get install -y orthanc orthanc-dicomweb"
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OrthancServer:
    """An Orthanc process of our own: its folder, port and credentials."""

    root: Path
    port: int = 0
    username: str = "maskloop"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The REST root."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root."""
        return f"{self.url}/dicom-web"

    @property
    def host(self) -> str:
        """host:port, as an allow-list names it."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> OrthancServer:
        """Write the configuration, start Orthanc and wait until GET /system answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        config = {
            "Name": "maskloop-test-pacs",
            "StorageDirectory": str(self.root / "db"),
            "IndexDirectory": str(self.root / "db"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "HttpCompressionEnabled": False,
            "OverwriteInstances": True,
            "StableAge": 1,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config))
        log = (self.root / "orthanc.log").open("wb")
        self.process = subprocess.Popen(
            [str(ORTHANC), str(path)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with suppress(requests.RequestException):
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=1).ok:
                    return self
            time.sleep(0.1)
        self.stop()
        tail = (self.root / "orthanc.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"Orthanc did not start on port {self.port}:\n{tail}")

    @property
    def auth(self) -> tuple[str, str]:
        """HTTP basic credentials."""
        return (self.username, self.password)

    def stop(self) -> None:
        """Stop the server (and anything it started)."""
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)
        self.process = None

    def client(self) -> DICOMwebClient:
        """A DICOMweb client with the server's credentials."""
        session = requests.Session()
        session.auth = self.auth
        return DICOMwebClient(self.dicomweb_url, session=session)

    def store(self, datasets: Sequence[Dataset]) -> None:
        """STOW-RS datasets as DICOM files (preamble and 'DICM' prefix); fail on any refused instance."""
        for ds in datasets:
            ds.preamble = b"\x00" * 128
        answer = self.client().store_instances(list(datasets))
        assert not list(answer.get("FailedSOPSequence", []) or []), answer

    def instance_count(self) -> int:
        """Instances stored on the server."""
        response = requests.get(f"{self.url}/statistics", auth=self.auth, timeout=10)
        response.raise_for_status()
        return int(response.json()["CountInstances"])


@dataclass(frozen=True)
class Patient:
    """Who and where a synthetic study belongs to."""

    patient_id: str
    name: str = "Doe^Jane"
    sex: str = "F"
    birth_date: str = "19610315"
    age: str = "063Y"
    institution: str = "Saint Example Hospital"
    accession: str = "ACC0001"
    study_date: str = "20240611"


def _header(patient: Patient, study_uid: str, frame_uid: str, sop_class: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = study_uid, frame_uid
    ds.PatientName, ds.PatientID, ds.PatientSex = patient.name, patient.patient_id, patient.sex
    ds.PatientBirthDate, ds.PatientAge = patient.birth_date, patient.age
    ds.StudyDate, ds.StudyTime, ds.SeriesDate = patient.study_date, "101500", patient.study_date
    ds.AccessionNumber, ds.StudyID, ds.StudyDescription = patient.accession, "1", "CT ABDOMEN PELVIS"
    ds.ReferringPhysicianName = "Welby^Marcus"
    ds.InstitutionName, ds.InstitutionAddress = patient.institution, "1 Example Street"
    ds.Manufacturer, ds.ManufacturerModelName = "SIEMENS", "SOMATOM Force"
    ds.StationName, ds.DeviceSerialNumber, ds.OperatorsName = "CT01", "12345", "Tech^Tina"
    ds.PositionReferenceIndicator = ""
    return ds


def ct_series(
    hu: np.ndarray,
    affine: np.ndarray,
    patient: Patient,
    *,
    study_uid: str,
    series_number: int,
    description: str,
    contrast: str = "",
    frame_uid: str | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
) -> list[Dataset]:
    """One CT slice per k of a HU volume data[i, j, k] placed by its RAS affine (signed 16-bit, intercept -1024)."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)[:3, :]
    di, dj = lps[:, 0], lps[:, 1]
    si, sj = float(np.linalg.norm(di)), float(np.linalg.norm(dj))
    series_uid, frame = generate_uid(), frame_uid or generate_uid()
    stored = (np.asarray(hu).astype(np.int32) + 1024).astype(np.int16)
    out = []
    for k in range(hu.shape[2]):
        ds = _header(patient, study_uid, frame, CTImageStorage)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, series_number, description
        ds.Modality, ds.InstanceNumber, ds.ImageType = "CT", k + 1, list(image_type)
        ds.BodyPartExamined, ds.KVP, ds.ConvolutionKernel = "ABDOMEN", "120", "Br40"
        if contrast:
            ds.ContrastBolusAgent = contrast
        ds.ImagePositionPatient = [f"{v:.6f}" for v in lps @ np.array([0.0, 0.0, float(k), 1.0])]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*di / si, *dj / sj)]
        ds.PixelSpacing = [f"{sj:.6f}", f"{si:.6f}"]
        ds.SliceThickness = f"{float(np.linalg.norm(lps[:, 2])):.6f}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        out.append(ds)
    return out


def mr_series(patient: Patient, *, study_uid: str, slices: int = 3) -> list[Dataset]:
    """A tiny MR series (a study with no CT)."""
    series_uid, frame = generate_uid(), generate_uid()
    out = []
    for k in range(slices):
        ds = _header(patient, study_uid, frame, MRImageStorage)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, 1, "T2 axial"
        ds.Modality, ds.InstanceNumber, ds.ImageType = "MR", k + 1, ["ORIGINAL", "PRIMARY"]
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 5.0 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 5
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 8, 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()
        out.append(ds)
    return out
