"""Click-guided refinement through the API: `POST /api/scans/{id}/interactive` answered by a real Celery worker of
the `interactive` queue (Redis broker, replies by BLPOP), its refusals, and the embedded default (SQLite broker,
reply files).

The model is a tiny random-init network of the click-guided architecture (worker.models.interactive): these tests
are about serving (routing, caching, validation, transport), not accuracy, which the model's own tests measure.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from backend.core.blobstore import BlobStore
from backend.imaging import chunks
from backend.imaging.phantom import Phantom
from backend.interactive import service as interactive
from backend.models import LabelVersion, ModelVersion, ScanTask, User
from backend.projects import service as projects
from backend.registry import service as registry
from tests.factories import small_phantom, upload_scan
from tests.integration.worker_stack import ROOT, Stack, build_stack

pytestmark = pytest.mark.slow

MODEL = "tiny-interactive"
STRUCTURES = ["liver", "spleen", "kidney_left"]
# Small and fast: 3 levels, 6 mm model grid, a 120 mm first region, at most 8 clicks.
CONFIG: dict[str, Any] = {
    "channels": [4, 8, 16],
    "num_res_units": 1,
    "spacing_mm": 6.0,
    "margin_mm": 24.0,
    "min_extent_mm": 120.0,
    "max_size": 32,
    "max_clicks": 8,
}


def tiny_weights(config: dict[str, Any] = CONFIG, seed: int = 0) -> bytes:
    """Random-init weights of the click-guided network with this config (plumbing tests: no training)."""
    import torch

    from worker.models.interactive.model import InteractiveConfig, build_network
    from worker.models.training import save_weights

    torch.manual_seed(seed)
    return save_weights(build_network(InteractiveConfig.from_json(config)))


def register_model(db: Any, blobs: BlobStore, project_id: int, name: str = MODEL, weights: bytes | None = None) -> int:
    """Register and promote an interactive model in a project; returns the promoted version's id."""
    model = registry.create_model(
        db,
        project_id,
        name=name,
        architecture=interactive.INTERACTIVE_ARCHITECTURE,
        structures=STRUCTURES,
        config=CONFIG,
    )
    version = registry.add_version(db, blobs, model, weights=weights or tiny_weights(), provenance={"test": True})
    registry.promote(db, version, None, checked=False)
    db.commit()
    return int(version.id)


def start_interactive_worker(stack: Stack, name: str, extra_env: dict[str, str] | None = None) -> Path:
    """A worker of the interactive queue alone (solo pool, as `maskloop worker --queues interactive`); waits until
    it consumes and returns its log."""
    log_path = stack.log_dir / f"worker-{name}.log"
    command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "interactive", "-P", "solo"]
    command += ["--hostname", f"{name}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**stack.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.workers.append(process)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the interactive worker exited:\n{log_path.read_text()[-3000:]}")
        if " ready." in log_path.read_text(errors="replace"):
            return log_path
        time.sleep(0.2)
    raise AssertionError(f"the interactive worker did not start:\n{log_path.read_text()[-3000:]}")


def inside_point(mask: np.ndarray) -> list[int]:
    """A voxel of the mask near its centre of mass (storage order)."""
    points = np.argwhere(mask)
    centre = points.mean(axis=0)
    best = points[np.argmin(((points - centre) ** 2).sum(axis=1))]
    return [int(v) for v in best]


def box_of(answer: dict[str, Any]) -> np.ndarray:
    """An answer's decoded box."""
    size = (answer["size"][0], answer["size"][1], answer["size"][2])
    return chunks.decode_box(base64.b64decode(answer["data"]), size, answer["encoding"])


def placed(answer: dict[str, Any], base: np.ndarray) -> np.ndarray:
    """The structure's whole mask after the browser applies an answer to `base`."""
    out = base.copy()
    o, s = answer["origin"], answer["size"]
    out[o[0] : o[0] + s[0], o[1] : o[1] + s[1], o[2] : o[2] + s[2]] = box_of(answer)
    return out


@dataclass
class Live:
    """The stack with an interactive worker, a scan and the tiny model."""

    stack: Stack
    phantom: Phantom
    scan_id: int
    version_id: int

    def click(self, body: dict[str, Any], role: str = "annotator", scan_id: int | None = None) -> Any:
        """POST a click request."""
        return self.stack.client.post(
            f"/api/scans/{scan_id or self.scan_id}/interactive", json=body, headers=self.stack.headers[role]
        )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """PostgreSQL + Redis, one scan, the tiny model promoted, a warm worker of the interactive queue."""
    tmp = tmp_path_factory.mktemp("interactive-api")
    with build_stack(tmp) as stack:
        phantom = small_phantom(seed=3, lesion=False)
        scan_id = int(upload_scan(stack.client, stack.headers["lead"], stack.project.id, phantom, "click-1")["id"])
        with stack.factory() as db:
            version_id = register_model(db, stack.blobs, stack.project.id)
        start_interactive_worker(stack, "clicks")
        yield Live(stack, phantom, scan_id, version_id)


def test_a_click_is_answered_with_the_mask_in_a_box_and_nothing_is_written(live: Live) -> None:
    liver = live.phantom.masks["liver"]
    body = {"structure": "liver", "positive": [inside_point(liver)]}
    first = live.click(body)
    assert first.status_code == 200, first.text
    answer = first.json()
    shape = liver.shape
    assert answer["structure"] == "liver" and answer["encoding"] == "bits+gzip"
    assert answer["model"] == MODEL and answer["model_version_id"] == live.version_id
    assert all(o >= 0 and o + s <= n for o, s, n in zip(answer["origin"], answer["size"], shape, strict=True))
    assert answer["voxels"] == int(box_of(answer).sum())
    assert {"total_ms", "queue_ms", "worker_ms", "network_ms"} <= set(answer["timings"])
    # Warm now (model and volume cached): the same clicks give the same answer, without loading anything.
    again = live.click(body).json()
    assert np.array_equal(box_of(again), box_of(answer)) and again["origin"] == answer["origin"]
    assert "load_volume_ms" not in again["timings"] and "load_model_ms" not in again["timings"]
    # A further click refines the previous answer, sent back as the current mask.
    previous = {k: answer[k] for k in ("origin", "size", "encoding", "data")}
    corner = [answer["origin"][0], answer["origin"][1], answer["origin"][2]]
    refined = live.click({**body, "negative": [corner], "previous": previous})
    assert refined.status_code == 200, refined.text
    with live.stack.factory() as db:
        versions = db.scalar(select(func.count()).select_from(LabelVersion).where(LabelVersion.scan_id == live.scan_id))
    assert versions == 0


def test_warm_up_is_accepted(live: Live) -> None:
    response = live.stack.client.post(
        f"/api/scans/{live.scan_id}/interactive/warm", json={}, headers=live.stack.headers["annotator"]
    )
    assert response.status_code == 202, response.text
    assert response.json()["model"] == MODEL and response.json()["max_clicks"] == CONFIG["max_clicks"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"structure": "gall_bladder", "positive": [[30, 30, 15]]}, 422, "does not know 'gall_bladder'"),
        ({"structure": "no_such_organ", "positive": [[30, 30, 15]]}, 422, "not in the project's label schema"),
        ({"structure": "liver", "positive": [[64, 30, 15]]}, 422, "outside the volume"),
        ({"structure": "liver", "positive": [[30, 30, 15]], "negative": [[-1, 0, 0]]}, 422, "outside the volume"),
        ({"structure": "liver", "positive": [[30, 30, 15]] * 9}, 422, "at most 8"),
        ({"structure": "liver", "negative": [[30, 30, 15]]}, 422, "at least one positive click"),
        ({"structure": "liver", "positive": [[30, 30]]}, 422, ""),
        ({"structure": "liver", "positive": [[30, 30, 15]], "model": "classical-hu"}, 422, "not a click-guided"),
        ({"structure": "liver", "positive": [[30, 30, 15]], "model": "missing"}, 404, "no model named"),
        (
            {
                "structure": "liver",
                "positive": [[1, 1, 1]],
                "previous": {"origin": [60, 0, 0], "size": [8, 8, 8], "data": ""},
            },
            422,
            "outside the volume",
        ),
        (
            {
                "structure": "liver",
                "positive": [[1, 1, 1]],
                "previous": {"origin": [0, 0, 0], "size": [8, 8, 8], "data": "!!"},
            },
            422,
            "not base64",
        ),
        (
            {
                "structure": "liver",
                "positive": [[1, 1, 1]],
                "previous": {"origin": [0, 0, 0], "size": [8, 8, 8], "data": "AAAA"},
            },
            422,
            "",
        ),
    ],
)
def test_bad_clicks_are_clear_4xx(live: Live, body: dict[str, Any], status: int, words: str) -> None:
    if body.get("model") == "classical-hu":
        with live.stack.factory() as db:
            registry.ensure_classical_model(db, live.stack.blobs, live.stack.project.id)
            db.commit()
    response = live.click(body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_who_may_click(live: Live) -> None:
    body = {"structure": "liver", "positive": [[30, 30, 15]]}
    assert live.click(body, role="viewer").status_code == 403
    with live.stack.factory() as db:
        admin = db.scalars(select(User).where(User.email == "admin@example.org")).one()
        other = projects.create_project(db, "click-other", "Other", admin)
        db.commit()
        other_id = other.id
    hidden = upload_scan(live.stack.client, live.stack.headers["admin"], other_id, live.phantom, "hidden-1")
    response = live.click(body, scan_id=int(hidden["id"]))
    assert response.status_code == 404, response.text
    assert live.click(body, scan_id=999_999).status_code == 404
    # The admin sees it, but that project has no interactive model: a clear 409, nothing run.
    response = live.click(body, role="admin", scan_id=int(hidden["id"]))
    assert response.status_code == 409 and "no interactive model" in response.json()["detail"]


def test_approved_scans_and_others_leases_are_refused(live: Live) -> None:
    scan_id = int(
        upload_scan(live.stack.client, live.stack.headers["lead"], live.stack.project.id, live.phantom, "lock-1")["id"]
    )
    body = {"structure": "liver", "positive": [[30, 30, 15]]}
    lease = live.stack.client.post(f"/api/scans/{scan_id}/lease", headers=live.stack.headers["lead"])
    assert lease.status_code in (200, 201), lease.text
    response = live.click(body, scan_id=scan_id)
    assert response.status_code == 409 and "is editing scan" in response.json()["detail"]
    assert live.click(body, role="lead", scan_id=scan_id).status_code == 200
    with live.stack.factory() as db:
        task = db.get(ScanTask, scan_id)
        assert task is not None
        task.state, task.lease_user_id, task.lease_expires_at = "approved", None, None
        db.commit()
    response = live.click(body, role="lead", scan_id=scan_id)
    assert response.status_code == 409 and "approved" in response.json()["detail"]


def test_a_model_without_weights_is_refused_and_nothing_is_written(live: Live) -> None:
    with live.stack.factory() as db:
        model = registry.create_model(
            db,
            live.stack.project.id,
            name="no-weights",
            architecture="interactive",
            structures=STRUCTURES,
            config=CONFIG,
        )
        db.add(ModelVersion(model_id=model.id, number=1, weights_digest=None, is_promoted=True))
        # A version whose weights blob is gone from the store: only the worker finds out.
        lost = registry.create_model(
            db,
            live.stack.project.id,
            name="lost-weights",
            architecture="interactive",
            structures=STRUCTURES,
            config=CONFIG,
        )
        db.add(ModelVersion(model_id=lost.id, number=1, weights_digest="ab" * 32, weights_bytes=1, is_promoted=True))
        db.commit()
    body = {"structure": "liver", "positive": [[30, 30, 15]]}
    response = live.click({**body, "model": "no-weights"})
    assert response.status_code == 409 and "has no weights" in response.json()["detail"]
    response = live.click({**body, "model": "lost-weights"})
    assert response.status_code == 409 and "missing from the blob store" in response.json()["detail"]
    with live.stack.factory() as db:
        versions = db.scalar(select(func.count()).select_from(LabelVersion).where(LabelVersion.scan_id == live.scan_id))
    assert versions == 0


def test_a_worker_that_does_not_answer_in_time_is_a_504(live: Live) -> None:
    settings = live.stack.settings
    saved = settings.interactive_timeout_s
    settings.interactive_timeout_s = 0.001
    try:
        response = live.click({"structure": "liver", "positive": [[30, 30, 15]]})
    finally:
        settings.interactive_timeout_s = saved
    assert response.status_code == 504, response.text
    assert "did not answer within" in response.json()["detail"]
    # The expired request was dropped (or its late reply expires): the next click is answered normally.
    assert live.click({"structure": "liver", "positive": [[30, 30, 15]]}).status_code == 200


def test_a_reply_slower_than_redis_default_socket_timeout_still_arrives(live: Live) -> None:
    """redis-py's sockets time out after 5 s by default; a click may take longer (a busy CPU) within its timeout."""
    replies = interactive.replies_for(live.stack.settings)
    request_id = "5" * 32
    sender = threading.Timer(5.5, replies.send, args=(request_id, {"ok": True, "late": 1}))
    sender.start()
    try:
        assert replies.wait(request_id, 8.0) == {"ok": True, "late": 1}
    finally:
        sender.cancel()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The embedded default: SQLite database and broker, reply files, a warm interactive worker polling often."""
    tmp = tmp_path_factory.mktemp("interactive-embedded")
    with build_stack(tmp, embedded=True) as stack:
        phantom = small_phantom(seed=4, lesion=False)
        scan_id = int(upload_scan(stack.client, stack.headers["lead"], stack.project.id, phantom, "embedded-1")["id"])
        with stack.factory() as db:
            version_id = register_model(db, stack.blobs, stack.project.id)
        start_interactive_worker(stack, "embedded-clicks", {"MASKLOOP_BROKER_POLL_S": "0.05"})
        yield Live(stack, phantom, scan_id, version_id)


def test_the_embedded_default_answers_a_warm_click(embedded: Live) -> None:
    """SQLite broker and reply files: a second click is answered alike and leaves no reply file behind (its latency
    is the bench's `interactive_click_embedded_p50_ms`, not a timed assertion)."""
    assert interactive.reply_kind(embedded.stack.settings) == "file"
    body = {"structure": "liver", "positive": [inside_point(embedded.phantom.masks["liver"])]}
    first = embedded.click(body)
    assert first.status_code == 200, first.text
    second = embedded.click(body)
    assert second.status_code == 200 and np.array_equal(box_of(second.json()), box_of(first.json()))
    assert not os.listdir(embedded.stack.settings.data_dir / "interactive-replies")


def test_the_api_and_the_worker_agree_on_the_model_contract() -> None:
    from worker.models.interactive import ARCHITECTURE, InteractiveConfig

    assert interactive.INTERACTIVE_ARCHITECTURE == ARCHITECTURE
    assert interactive.INTERACTIVE_TRAITS.needs_weights
    assert InteractiveConfig().max_clicks == interactive.rules.DEFAULT_MAX_CLICKS


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_maskloop_serve_runs_a_warm_interactive_worker_in_the_embedded_default(tmp_path: Path) -> None:
    env = {**os.environ, "MASKLOOP_DATA_DIR": str(tmp_path / "data")}
    for key in ("MASKLOOP_DATABASE_URL", "MASKLOOP_BROKER_URL", "MASKLOOP_BROKER_POLL_S"):
        env.pop(key, None)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "maskloop"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(workers := _children(server.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in workers}
        interactive_pids = [pid for pid, argv in commands.items() if b"interactive" in argv]
        assert len(interactive_pids) == 1, commands
        argv = commands[interactive_pids[0]]
        assert argv[argv.index(b"-Q") + 1] == b"interactive" and argv[argv.index(b"-P") + 1] == b"solo"
        environ = Path(f"/proc/{interactive_pids[0]}/environ").read_bytes().split(b"\0")
        assert b"MASKLOOP_BROKER_POLL_S=0.05" in environ
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
