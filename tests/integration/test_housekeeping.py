"""Housekeeping: gc sweeps only old unreferenced blobs, fsck finds missing/corrupt ones, stale temp files go."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from backend import cli
from backend.core.blobstore import LocalBlobStore
from backend.core.config import Settings
from backend.imaging import chunks
from backend.jobs import service as jobs
from backend.labels import service as labels
from backend.main import create_app
from backend.models import AttentionMap, LabelVersionStructure, Prediction, Scan
from backend.registry import service as registry
from backend.storage import service as storage
from backend.storage.temp import sweep_temp
from tests.conftest import World
from tests.factories import small_phantom, upload_masks, upload_scan

DAY = 24 * 3600


def _age(path: Path, seconds: float) -> None:
    moment = time.time() - seconds
    os.utime(path, (moment, moment))


def _stored(blobs: LocalBlobStore) -> set[str]:
    return {info.digest for info in blobs.iter_blobs()}


@dataclass
class Stock:
    """A project whose rows reference blobs of every kind, all written two days ago, plus two orphans."""

    scan: Scan
    referenced: set[str]
    chunk_only: set[str]  # chunks named only inside a manifest
    orphan_old: str
    orphan_young: str


@pytest.fixture
def stock(client: TestClient, world: World, db: Session, blobs: LocalBlobStore) -> Stock:
    """Rows referencing: a scan image, label manifests and their chunks, an attention manifest, a draft, model
    weights, prediction maps (JSON) and an export archive (job result JSON)."""
    phantom = small_phantom(seed=5)
    lead = world.headers["lead"]
    scan_json = upload_scan(client, lead, world.project.id, phantom, "case-gc")
    version = upload_masks(
        client, lead, scan_json["id"], {k: phantom.masks[k] for k in ("liver", "pancreas")}, phantom.affine
    )
    scan = db.get(Scan, scan_json["id"])
    assert scan is not None
    draft = labels.save_draft(db, blobs, scan, world.users["annotator"], version["id"], b'{"draft": 1}')
    model = registry.create_model(db, world.project.id, name="gc-unet", architecture="unet", structures=["liver"])
    weights = registry.add_version(db, blobs, model, weights=b"weights-" * 100)
    job = jobs.create_job(db, project_id=world.project.id, kind="export", created_by=world.users["lead"].id)
    archive = blobs.put_bytes(b"archive-bytes")
    job.result = {"archive_digest": archive, "archive_name": "x.tar.gz"}
    probability = blobs.put_bytes(b"probability-map")
    prediction_job = jobs.create_job(db, project_id=world.project.id, kind="preannotate", created_by=None)
    db.flush()
    db.add(
        Prediction(
            job_id=prediction_job.id,
            scan_id=scan.id,
            model_version_id=weights.id,
            label_version_id=version["id"],
            maps={"liver": {"probability": probability, "format": "u8", "shape": [1, 2, 3]}},
        )
    )
    # An attention mask whose chunks appear in no label version: referenced only through its manifest.
    cube = np.zeros(tuple(scan.shape), dtype=bool)
    cube[1:7, 2:9, 3:5] = True
    attention = chunks.build_manifest(cube, blobs.put_bytes)
    attention_digest = blobs.put_bytes(attention.to_bytes())
    structure_id = db.query(LabelVersionStructure).filter_by(version_id=version["id"]).first()
    assert structure_id is not None
    db.add(
        AttentionMap(
            project_id=world.project.id,
            scan_id=scan.id,
            structure_id=structure_id.structure_id,
            manifest_digest=attention_digest,
            attention_voxels=1,
            inconsistency_voxels=0,
            uncertainty_voxels=0,
            overlap_voxels=0,
            priority=1.0,
            model_version_ids=[weights.id],
        )
    )
    db.flush()
    manifests = [e.manifest_digest for e in db.query(LabelVersionStructure).filter_by(version_id=version["id"])]
    label_chunks = {e.digest for m in manifests if m for e in labels.load_manifest(blobs, m).entries}
    chunk_only = {e.digest for e in attention.entries} - label_chunks
    assert chunk_only, "the attention cube should have chunks of its own"
    referenced = (
        {scan.image_digest, draft.payload_digest, str(weights.weights_digest), archive, probability, attention_digest}
        | {m for m in manifests if m}
        | label_chunks
        | chunk_only
    )
    orphan_old = blobs.put_bytes(b"nobody points at me")
    for path in blobs.root.rglob("*"):
        if path.is_file() and path.relative_to(blobs.root).parts[0] != "tmp":
            _age(path, 2 * DAY)
    orphan_young = blobs.put_bytes(b"my row is not committed yet")
    assert _stored(blobs) == referenced | {orphan_old, orphan_young}
    return Stock(scan, referenced, chunk_only, orphan_old, orphan_young)


@pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)
def test_gc_sweeps_only_old_unreferenced_blobs(db: Session, blobs: LocalBlobStore, stock: Stock) -> None:
    report = storage.collect_garbage(db, blobs, grace_s=DAY)
    assert _stored(blobs) == stock.referenced | {stock.orphan_young}
    assert (report.swept, report.swept_bytes) == (1, len(b"nobody points at me"))
    assert report.kept_young == 1
    assert storage.check_blobs(db, blobs).ok, "gc removed something a row still needs"


def test_gc_dry_run_deletes_nothing_and_reports_bytes(
    db: Session, blobs: LocalBlobStore, stock: Stock, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _stored(blobs)
    listed: list[str] = []
    report = storage.collect_garbage(db, blobs, grace_s=DAY, dry_run=True, on_sweep=lambda i: listed.append(i.digest))
    assert listed == [stock.orphan_old] and report.swept_bytes == len(b"nobody points at me")
    _patch_cli(monkeypatch, db, blobs, settings)
    result = CliRunner().invoke(cli.app, ["gc", "--dry-run", "--grace-hours", "24"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps at the terminal width
    assert stock.orphan_old in output and "would delete 1 blobs (19 bytes" in output
    assert _stored(blobs) == before
    # With no grace period only rows protect a blob: the young orphan goes too.
    result = CliRunner().invoke(cli.app, ["gc", "--grace-hours", "0"])
    assert result.exit_code == 0, result.output
    assert _stored(blobs) == stock.referenced


def test_gc_keeps_an_old_blob_a_writer_just_reused(db: Session, blobs: LocalBlobStore, stock: Stock) -> None:
    # An upload finds the content already stored (dedup) and will commit a row naming it: gc must wait.
    assert blobs.exists(stock.orphan_old)
    storage.collect_garbage(db, blobs, grace_s=DAY)
    assert stock.orphan_old in _stored(blobs)


def test_gc_refuses_to_sweep_when_a_manifest_is_unreadable(db: Session, blobs: LocalBlobStore, stock: Stock) -> None:
    attention = db.query(AttentionMap).one()
    path = blobs.local_path(attention.manifest_digest)
    assert path is not None
    path.unlink()
    with pytest.raises(storage.UnreadableManifests):
        storage.collect_garbage(db, blobs, grace_s=0)
    assert stock.orphan_old in _stored(blobs)


def test_fsck_names_missing_and_corrupt_blobs_with_their_rows(
    db: Session, blobs: LocalBlobStore, stock: Stock, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert storage.check_blobs(db, blobs).ok
    missing_chunk = sorted(stock.chunk_only)[0]
    path = blobs.local_path(missing_chunk)
    assert path is not None
    path.unlink()
    image = blobs.local_path(stock.scan.image_digest)
    assert image is not None
    image.write_bytes(b"bit rot")
    report = storage.check_blobs(db, blobs)
    found = {p.digest: p for p in report.problems}
    assert set(found) == {missing_chunk, stock.scan.image_digest}
    assert found[missing_chunk].state == "missing"
    assert any(r.startswith("attention_maps[") for r in found[missing_chunk].rows)
    assert found[stock.scan.image_digest].state == "corrupt"
    assert found[stock.scan.image_digest].rows == [f"scans[id={stock.scan.id}].image_digest"]
    quick = storage.check_blobs(db, blobs, quick=True)
    assert [p.digest for p in quick.problems] == [missing_chunk]
    _patch_cli(monkeypatch, db, blobs, settings)
    result = CliRunner().invoke(cli.app, ["fsck"])
    output = " ".join(result.output.split())
    assert result.exit_code == 1 and "corrupt" in output and missing_chunk in output


def test_stale_temp_files_go_at_start_young_ones_stay(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalBlobStore(settings.resolved_blob_root)
    old_tmp, young_tmp = store.root / "tmp" / "tmpkilled", store.root / "tmp" / "tmpwriting"
    old_tmp.write_bytes(b"x" * 1000)
    young_tmp.write_bytes(b"y")
    _age(old_tmp, 7 * 3600)
    system = tmp_path / "system-tmp"
    old_dir = system / "maskloop-dicom-abc"
    (old_dir / "series").mkdir(parents=True)
    (old_dir / "series" / "1.dcm").write_bytes(b"d" * 10)
    for p in (old_dir / "series" / "1.dcm", old_dir / "series", old_dir):
        _age(p, 7 * 3600)
    busy_dir = system / "maskloop-export-busy"  # old folder, but a file inside is still being written
    busy_dir.mkdir()
    (busy_dir / "out.tar").write_bytes(b"o")
    _age(busy_dir, 7 * 3600)
    foreign = system / "someone-else"
    foreign.write_bytes(b"f")
    _age(foreign, 7 * 3600)
    monkeypatch.setattr(tempfile, "tempdir", str(system))
    app = create_app(settings)
    with TestClient(app):  # the lifespan sweeps at start
        assert not old_tmp.exists() and young_tmp.exists()
        assert not old_dir.exists() and busy_dir.exists() and foreign.exists()
    assert sweep_temp(settings).files == 0


def _patch_cli(monkeypatch: pytest.MonkeyPatch, db: Session, blobs: LocalBlobStore, settings: Settings) -> None:
    """Point the CLI commands at the test transaction, blob folder and settings."""

    @contextmanager
    def scope() -> Iterator[Session]:
        yield db

    monkeypatch.setattr(cli.storage, "session_scope", scope)
    monkeypatch.setattr(cli.storage, "get_blob_store", lambda: blobs)
    monkeypatch.setattr(cli.storage, "get_settings", lambda: settings)
