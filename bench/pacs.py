"""PACS benchmark: a full-size CT series retrieved from a real PACS into a scan, and a 28-structure version sent back
to it as DICOM SEG, each as the `pacs` job the workers run.

Set-up: Debian's Orthanc with its DICOMweb plugin on a free 127.0.0.1 port (tests/orthanc.py), a fresh PostgreSQL
database, a local blob folder. A 512×512×256 phantom CT (0.75×0.75×1.0 mm) is written as a DICOM series with
pydicom (signed 16-bit, as scanners write it) and stored on Orthanc over STOW-RS; the project's DICOMweb source
points at it. Each job is launched through the same use case as the API (`flows.pacs`) and run in this process by
the worker's own pipeline (`worker.pipelines.pacs_retrieve.run`: claim, heartbeat, progress, commit), so the
figure is the job's claim-to-commit time without a broker's delivery delay.

Figures (results.json keys):

* `pacs_import_series_s` — seconds of the retrieval job: QIDO-RS is done at launch; the job streams the 256
  instances over WADO-RS into a temporary folder, reads the header, decodes the series with the DICOM loader,
  stores the volume blob and writes the scan and its rows (goal ≤ 30 s).
* `stow_seg_s` — seconds of the STOW job for one version holding 28 structures (the phantom's organs and
  core_spine's synthesised structures): the slice headers read back from the PACS (WADO-RS metadata), each
  structure's mask read once (the box of its chunks) while its frames are packed, the SEG built with
  `backend.imaging.dicom_seg.segmentation` and stored over STOW-RS in one streamed request (goal ≤ 10 s).
* `pacs_stow_ct_series_s` — seconds to store the 256-slice source series on Orthanc from this process (context:
  what the PACS itself takes to ingest it).

Every run checks the scan's shape and voxels against the phantom and that the SEG has 28 segments.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from backend.imaging.phantom import generate_phantom
from bench import Row
from bench.core_spine import BenchError, create_admin_and_project, extra_structures, pg_database
from tests.orthanc import OrthancServer, Patient, ct_series
from tests.orthanc import available as orthanc_available

SHAPE = (512, 512, 256)
SPACING = (0.75, 0.75, 1.0)
SEED = 20241
_ENV = (
    "MASKLOOP_DATABASE_URL",
    "MASKLOOP_DATA_DIR",
    "MASKLOOP_BLOB_ROOT",
    "MASKLOOP_BROKER_URL",
    "MASKLOOP_SECRET_KEY",
    "MASKLOOP_PACS_ALLOWED_HOSTS",
)


def _log(message: str) -> None:
    print(f"  [pacs] {message}", file=sys.stderr, flush=True)


def _clear_caches() -> None:
    from backend.core import db as core_db
    from backend.core import queue
    from backend.core.blobstore import get_blob_store
    from backend.core.config import get_settings

    for cached in (get_settings, queue.client, get_blob_store, core_db.get_engine, core_db.get_session_factory):
        cached.cache_clear()


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """This process's settings pointed at the bench's database, blobs and PACS (restored on exit)."""
    saved = {key: os.environ.get(key) for key in _ENV}
    os.environ.update(values)
    _clear_caches()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _clear_caches()


def _run_job(job_id: int) -> tuple[float, dict[str, object]]:
    """Run a job with the worker's pipeline in this process; its seconds and the job row's result."""
    from backend.core.db import session_scope
    from backend.jobs import service as jobs
    from worker.pipelines import pacs_retrieve

    started = time.perf_counter()
    pacs_retrieve.run(job_id)
    elapsed = time.perf_counter() - started
    with session_scope() as db:
        job = jobs.get_job(db, job_id)
        if job.status != "succeeded":
            raise BenchError(f"job {job_id} {job.status}: {job.error}")
        return elapsed, dict(job.result)


def run() -> list[Row]:
    """Retrieve a 256-slice 512×512 series from Orthanc into a scan; send a 28-structure version as SEG."""
    missing = orthanc_available()
    if missing:
        raise BenchError(missing)
    with (
        tempfile.TemporaryDirectory(prefix="maskloop-bench-pacs-") as tmp,
        pg_database(f"maskloop_bench_pacs_{os.getpid()}") as url,
    ):
        folder = Path(tmp)
        pacs = OrthancServer(folder / "orthanc").start()
        try:
            env = {
                "MASKLOOP_DATABASE_URL": url,
                "MASKLOOP_DATA_DIR": str(folder / "data"),
                "MASKLOOP_BLOB_ROOT": str(folder / "blobs"),
                "MASKLOOP_BROKER_URL": f"sqla+sqlite:///{folder / 'broker.db'}",
                "MASKLOOP_SECRET_KEY": "bench-pacs-secret-0123456789abcdef0123456789",
                "MASKLOOP_PACS_ALLOWED_HOSTS": pacs.host,
            }
            with _environment(env):
                return _measure(pacs, url)
        finally:
            pacs.stop()


def _measure(pacs: OrthancServer, url: str) -> list[Row]:
    from backend.auth import service as auth
    from backend.core.blobstore import get_blob_store
    from backend.core.config import get_settings
    from backend.core.db import session_scope
    from backend.flows import pacs as pacs_flows
    from backend.imaging.nifti import load_nifti_bytes
    from backend.labels import service as labels
    from backend.models import Scan
    from backend.projects import service as projects
    from bench.core_spine import EMAIL

    create_admin_and_project(url)
    started = time.perf_counter()
    phantom = generate_phantom(SHAPE, SPACING, seed=SEED)
    study = generate_uid()
    series = ct_series(
        phantom.volume, phantom.affine, Patient("BENCH-PACS"), study_uid=study, series_number=2,
        description="Abdomen 1.0 portal venous", contrast="IOPAMIDOL",
    )  # fmt: skip
    _log(f"phantom and its {len(series)} slices written in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    for first in range(0, len(series), 32):
        pacs.store(series[first : first + 32])
    stow_ct_s = time.perf_counter() - started
    del series
    _log(f"series stored on Orthanc in {stow_ct_s:.1f} s")

    settings, blobs = get_settings(), get_blob_store()
    with session_scope() as db:
        admin = auth.get_user_by_email(db, EMAIL)
        project = projects.get_project_by_slug(db, "bench")
        pacs_flows.configure_source(
            db, settings, project, actor=admin, base_url=pacs.dicomweb_url, username=pacs.username,
            password=pacs.password, deidentify=False,
        )  # fmt: skip
        launched = pacs_flows.launch_retrieval(db, settings, project, actor=admin, study_uid=study)
        assert launched.job is not None
        retrieval_job = launched.job.id
    import_s, result = _run_job(retrieval_job)
    scan_id = int(str(result["scan_id"]))
    _log(f"series retrieved into scan {scan_id} in {import_s:.1f} s")
    with session_scope() as db:
        scan = db.get(Scan, scan_id)
        assert scan is not None
        volume = load_nifti_bytes(blobs.get_bytes(scan.image_digest), "bench.nii.gz")
        if volume.data.shape != SHAPE or not np.array_equal(volume.data, phantom.volume):
            raise BenchError("the retrieved scan differs from the phantom")
        del volume

    masks = {**phantom.masks, **extra_structures(SHAPE)}
    if len(masks) != 28:
        raise BenchError(f"expected 28 structures, the phantom and extras give {len(masks)}")
    with session_scope() as db:
        scan = db.get(Scan, scan_id)
        assert scan is not None
        loaders = {name: (lambda mask=mask: mask) for name, mask in masks.items()}
        prebuilt = labels.prebuild_masks(blobs, loaders)
        version = labels.create_version(
            db, blobs, scan, author=labels.Author(user_id=None), kind="human", message="bench", masks={},
            prebuilt=prebuilt,
        )  # fmt: skip
        db.commit()
        version_id = version.id
    del masks, phantom
    with session_scope() as db:
        scan = db.get(Scan, scan_id)
        assert scan is not None
        stow_job = pacs_flows.launch_stow(db, settings, scan, actor=None, version_id=version_id).id
    stow_s, stowed = _run_job(stow_job)
    if stowed.get("segments") != 28:
        raise BenchError(f"the SEG holds {stowed.get('segments')} segments, not 28")
    _log(f"28-structure SEG stored in {stow_s:.1f} s")
    return [
        Row(
            "pacs_import_series_s",
            "PACS: 256-slice 512² series → scan (WADO-RS job)",
            import_s,
            "s",
            "≤ 30",
            import_s <= 30,
        ),
        Row("stow_seg_s", "PACS: 28-structure version → SEG (STOW-RS job)", stow_s, "s", "≤ 10", stow_s <= 10),
        Row("pacs_stow_ct_series_s", "PACS: storing the 256-slice series on Orthanc", stow_ct_s, "s"),
    ]
