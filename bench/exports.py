"""Export benchmark: PanTS-layout export throughput of the `maskloop.export` job's work, on PostgreSQL.

Set-up (not timed): a fresh PostgreSQL database (Alembic), a local blob folder, a PanTS-schema project and
10 phantom scans of 256×256×128 voxels (1.4×1.4×2.0 mm, int16; cases 0, 3, 6, 9 stored LPS, the others RAS),
each with one `import` version holding its 17 drawn structures (overlapping pancreas/head/body/tail/lesion
and veins), imported through the services.

Timed: exactly what the export pipeline does between claiming the job and finishing it, in this process:
`plan_export` (versions chosen per scan, head), `write_export` in the PanTS layout (ct.nii.gz copied from the
blob store, 17 decoded masks written as uint8 .nii.gz, combined_labels.nii.gz in the default paint order,
metadata.csv/.xlsx, manifest.json, the dataset card README.md/cases.csv and SHA256SUMS of every file),
packing the folder as .tar.gz and storing the archive in the blob store.

Figures (results.json keys):

* `export_scans_per_min` — scans exported per minute over that whole job body (10 scans, one run).
* `export_folder_scans_per_min` — the same without the archive (what `maskloop export --out DIR` does).
* `export_archive_mib` — size of the archive, for context.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench import NO_GOAL, Row
from bench.core_spine import pg_database

N_SCANS = 10
SHAPE = (256, 256, 128)
SPACING = (1.4, 1.4, 2.0)


def _log(message: str) -> None:
    print(f"[exports] {message}", flush=True)


def run() -> list[Row]:
    """Set up 10 phantom scans with labels, time a PanTS export of them, return the figures."""
    from sqlalchemy.orm import Session

    from backend.auth import service as auth
    from backend.core.blobstore import LocalBlobStore
    from backend.core.db import make_engine
    from backend.exports import service as exports
    from backend.imaging.nifti import to_nifti_gz
    from backend.imaging.phantom import generate_phantom
    from backend.labels import service as labels
    from backend.projects import service as projects
    from backend.scans import service as scans

    with (
        tempfile.TemporaryDirectory(prefix="maskloop-bench-exports-") as tmp,
        pg_database(f"maskloop_bench_exports_{os.getpid()}") as url,
    ):
        work = Path(tmp)
        blobs = LocalBlobStore(work / "blobs")
        engine = make_engine(url)
        try:
            with Session(engine, expire_on_commit=False) as db:
                admin = auth.create_user(db, "bench@example.org", "bench-password-123", "Bench", is_admin=True)
                project = projects.create_project(db, "bench-exports", "Export benchmark", admin)
                db.commit()
                t0 = time.perf_counter()
                for index in range(N_SCANS):
                    orientation = "LPS" if index % 3 == 0 else "RAS"
                    ph = generate_phantom(SHAPE, SPACING, seed=index, orientation=orientation)
                    case_id = f"PanTS_{index + 1:08d}"
                    scan = scans.import_nifti(
                        db,
                        blobs,
                        project,
                        admin,
                        to_nifti_gz(ph.volume, ph.affine),
                        f"{case_id}.nii.gz",
                        case_id=case_id,
                        raw_metadata={"BDMAP ID": case_id, "ct phase": "Venous", "site": "JHH"},
                    )
                    labels.create_version(
                        db, blobs, scan, author=labels.Author(user_id=admin.id), kind="import", masks=ph.masks
                    )
                    db.commit()
                _log(f"set-up: {N_SCANS} scans of {SHAPE} imported in {time.perf_counter() - t0:.1f} s")

                started = time.perf_counter()
                params = exports.validate_request(
                    db, project, fmt="pants", version="head", structures=None, scan_ids=None, flt=None
                )
                plan = exports.plan_export(db, project, params)
                root = work / "out" / exports.dataset_folder_name(plan)
                manifest = exports.write_export(blobs, plan, root)
                folder_s = time.perf_counter() - started
                archive = work / "export.tar.gz"
                files = exports.archive_folder(root, archive)
                blobs.put_file(archive)
                total_s = time.perf_counter() - started
                archive_mib = archive.stat().st_size / 2**20
        finally:
            engine.dispose()
    exported = len(manifest["scans"])
    if exported != N_SCANS or manifest["skipped"]:
        raise AssertionError(f"expected {N_SCANS} exported scans, got {exported} (skipped {manifest['skipped']})")
    _log(f"folder in {folder_s:.1f} s, with archive ({files} files, {archive_mib:.1f} MiB) in {total_s:.1f} s")
    return [
        Row(
            "export_scans_per_min",
            f"PanTS export job body, {N_SCANS} phantoms {SHAPE[0]}×{SHAPE[1]}×{SHAPE[2]}, 17 structures",
            N_SCANS / total_s * 60.0,
            "scans/min",
            NO_GOAL,
        ),
        Row(
            "export_folder_scans_per_min",
            "PanTS export folder only (maskloop export --out)",
            N_SCANS / folder_s * 60.0,
            "scans/min",
            NO_GOAL,
        ),
        Row("export_archive_mib", "size of the PanTS export archive", archive_mib, "MiB", NO_GOAL),
    ]
