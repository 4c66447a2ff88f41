"""Export archives: packing a written folder, the job's short summary, and the download of a finished job."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path
from typing import Any

from backend.core.errors import Conflict, NotFound
from backend.models import Job


def archive_folder(folder: Path, target: Path) -> int:
    """Pack a folder as .tar.gz (the folder name as its top level, sorted, fixed mtimes); returns the file count."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with gzip.GzipFile(target, "wb", compresslevel=1, mtime=0) as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for path in files:
            info = tar.gettarinfo(str(path), arcname=f"{folder.name}/{path.relative_to(folder).as_posix()}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    return len(files)


def export_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The short form of a manifest kept in job.result."""
    return {
        "format": manifest["format"],
        "version": manifest["version"],
        "scans_exported": len(manifest["scans"]),
        "scans_skipped": len(manifest["skipped"]),
        "skipped": manifest["skipped"][:100],
        "structures": [s["name"] for s in manifest["structures"]],
        "paint_order": manifest["paint_order"],
        "test_split": manifest.get("test_split"),
        "test_cases": sum(1 for scan in manifest["scans"] if scan.get("folder") == "test"),
        "ignore_label": manifest.get("ignore_label"),
        "cases_with_missing_structures": len(manifest.get("cases_with_missing_structures", [])),
    }


def download_of(job: Job) -> tuple[str, str]:
    """The archive digest and file name of a finished export job (409 while it is not finished)."""
    if job.kind != "export":
        raise NotFound(f"job {job.id} is not an export")
    if job.status != "succeeded":
        detail = f": {job.error}" if job.status == "failed" and job.error else ""
        raise Conflict(f"export job {job.id} is {job.status}; the archive is not ready{detail}", status=job.status)
    digest = job.result.get("archive_digest")
    if not isinstance(digest, str):
        raise NotFound(f"export job {job.id} has no archive")
    return digest, str(job.result.get("archive_name") or f"export-{job.id}.tar.gz")
