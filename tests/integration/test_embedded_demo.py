"""The embedded default end to end: `maskloop demo-data` then `maskloop serve` on SQLite and a local blob folder."""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nibabel as nib
import pytest

from backend.cli import DEMO_PASSWORD

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    env = {**os.environ, "MASKLOOP_DATA_DIR": str(tmp_path / "data")}
    env.pop("MASKLOOP_DATABASE_URL", None)
    setup = subprocess.run(
        [str(BIN / "maskloop"), "demo-data", "--cases", "2", "--size", "64"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert "lead@maskloop.local" in setup.stdout
    assert "2 scans imported" in setup.stdout
    port = _free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [str(BIN / "maskloop"), "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("maskloop serve did not come up")
        yield base, tmp_path / "data"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_demo_data_and_serve_on_the_embedded_default(demo_server: tuple[str, Path]) -> None:
    base, data_dir = demo_server
    assert (data_dir / "maskloop.db").exists()
    assert any((data_dir / "blobs").rglob("*"))
    login = httpx.post(f"{base}/api/auth/login", json={"email": "annotator@maskloop.local", "password": DEMO_PASSWORD})
    assert login.status_code == 200, login.text
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    projects = httpx.get(f"{base}/api/projects", headers=headers).json()
    assert [p["slug"] for p in projects] == ["demo"]
    page = httpx.get(f"{base}/api/projects/{projects[0]['id']}/scans", headers=headers).json()
    assert page["total"] == 2
    scan = page["items"][0]
    assert scan["head_version_id"] is not None
    volume = httpx.get(f"{base}/api/scans/{scan['id']}/volume", headers=headers)
    assert volume.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(volume.content))
    assert image.shape == tuple(scan["shape"])
    version = httpx.get(f"{base}/api/versions/{scan['head_version_id']}", headers=headers).json()
    rows = {row["name"]: row for row in version["structures"]}
    assert rows["liver"]["voxel_count"] > 0 and rows["pancreas"]["voxel_count"] > 0
    # The second demo case has a structure file left out on purpose: recorded as missing, not empty.
    second = httpx.get(f"{base}/api/versions/{page['items'][1]['head_version_id']}", headers=headers).json()
    assert {r["name"]: r["status"] for r in second["structures"]}["gall_bladder"] == "missing"
    docs = httpx.get(f"{base}/docs")
    assert docs.status_code == 200
    # demo-data queued pre-annotation with both bundled models; the solo worker on the SQLite broker runs them.
    lead = httpx.post(f"{base}/api/auth/login", json={"email": "lead@maskloop.local", "password": DEMO_PASSWORD})
    lead_headers = {"Authorization": f"Bearer {lead.json()['access_token']}"}
    jobs_url = f"{base}/api/projects/{projects[0]['id']}/jobs"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        jobs = httpx.get(jobs_url, headers=lead_headers).json()["items"]
        if jobs and all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs):
            break
        time.sleep(1)
    assert len([j for j in jobs if j["kind"] == "preannotate"]) == 4, jobs  # 2 scans x (classical-hu, phantom-unet)
    assert all(j["status"] == "succeeded" for j in jobs), [(j["status"], j["error"]) for j in jobs]
    # Then one attention job per scan (each waited for its scan's pre-annotations): the overlay works at once.
    assert sorted(j["scan_id"] for j in jobs if j["kind"] == "attention") == sorted(s["id"] for s in page["items"])
    overlay = httpx.get(f"{base}/api/scans/{scan['id']}/attention/liver", headers=headers)
    assert overlay.status_code == 200, overlay.text
    versions = httpx.get(f"{base}/api/scans/{scan['id']}/versions", headers=headers).json()
    model_versions = [v for v in versions if v["kind"] == "model"]
    assert len(model_versions) == 2
    assert all(v["author"]["model_version_id"] is not None for v in model_versions)
    # The trained phantom model finds the liver where the ground truth has it.
    unet = next(
        j
        for j in jobs
        if j["kind"] == "preannotate" and j["params"]["model"] == "phantom-unet" and j["scan_id"] == scan["id"]
    )
    diff = httpx.get(
        f"{base}/api/versions/{unet['result']['label_version_id']}/diff",
        params={"against": scan["head_version_id"]},
        headers=headers,
    ).json()
    liver = next(row for row in diff["structures"] if row["structure"] == "liver")
    assert liver["dice"] > 0.8, liver


def _children(pid: int) -> list[int]:
    """Live child processes of a process (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_the_embedded_worker_goes_when_serve_is_killed(tmp_path: Path) -> None:
    env = {**os.environ, "MASKLOOP_DATA_DIR": str(tmp_path / "data")}
    env.pop("MASKLOOP_DATABASE_URL", None)
    env.pop("MASKLOOP_BROKER_URL", None)
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [str(BIN / "maskloop"), "serve", "--port", str(_free_port())],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (workers := _children(server.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert workers, "maskloop serve started no embedded worker"
        time.sleep(2)  # let the worker get past its imports
        server.kill()  # SIGKILL: no finally block of `serve` runs
        server.wait(timeout=10)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers), (tmp_path / "serve.log").read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
