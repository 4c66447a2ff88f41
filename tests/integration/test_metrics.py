"""Observability: /metrics (parsed with prometheus_client's own parser) counts requests by route template and
status; a real Celery worker's job metrics move and reach /metrics through the multiprocess files; the readiness
probe names the part that is down; log lines are JSON carrying the request id (HTTP) and the job id (workers)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore, LocalBlobStore, get_blob_store
from backend.core.config import Settings, get_settings
from backend.core.db import get_session, make_engine
from backend.core.queue import configure
from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import generate_phantom
from backend.main import create_app
from backend.models import ModelVersion
from backend.observability.logs import json_handler
from tests.conftest import World
from tests.integration.worker_stack import ROOT, Stack, build_stack
from tests.s3_server import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SCANS = "/api/projects/{project_id}/scans"
JOB = "/api/jobs/{job_id}"


def _samples(text: str) -> Samples:
    """Every sample of a scrape by (name, labels), as prometheus_client's parser reads the text format."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include these (0 when there is none)."""
    wanted = set(labels.items())
    return sum(value for (n, found), value in samples.items() if n == name and wanted <= found)


def _scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return _samples(response.text)


def _app(settings: Settings, session: Any, blobs: BlobStore) -> TestClient:
    """An app for these settings, on the given session and blob store (as the `client` fixture wires one)."""
    app = create_app(settings)

    def _session() -> Iterator[Session]:
        yield session

    app.dependency_overrides[get_session] = _session
    app.dependency_overrides[get_blob_store] = lambda: blobs
    app.dependency_overrides[get_settings] = lambda: settings
    return TestClient(app)


# --- requests: route templates, statuses, request ids ---------------------------------------------------------


def test_requests_are_counted_by_route_template_and_status(client: TestClient, world: World) -> None:
    lead = world.headers["lead"]
    scans = f"/api/projects/{world.project.id}/scans"
    before = _scrape(client)
    for _ in range(2):
        assert client.get(scans, headers=lead).status_code == 200
    assert client.get("/api/jobs/987654", headers=lead).status_code == 404
    assert client.get("/api/jobs/not-a-number", headers=lead).status_code == 422
    assert client.get("/api/no-such-route/987654").status_code == 404
    # Refused by the body guard before any route ran: still counted under the route's template.
    assert client.post(scans, content=b"x").status_code == 401
    after = _scrape(client)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("maskloop_http_requests_total", method="GET", route=SCANS, status="200") == 2
    assert moved("maskloop_http_requests_total", method="GET", route=JOB, status="404") == 1
    assert moved("maskloop_http_requests_total", method="GET", route=JOB, status="422") == 1
    assert moved("maskloop_http_requests_total", method="POST", route=SCANS, status="401") == 1
    assert moved("maskloop_http_request_duration_seconds_count", method="GET", route=SCANS) == 2
    assert moved("maskloop_http_request_duration_seconds_bucket", method="GET", route=SCANS, le="+Inf") == 2
    assert moved("maskloop_http_request_duration_seconds_sum", method="GET", route=SCANS) > 0
    # Templates only: no id or probed path becomes a label value (one series per scan would never end).
    routes = {dict(labels).get("route", "") for _, labels in after}
    assert not {r for r in routes if "987654" in r or "not-a-number" in r or "no-such-route" in r}, routes
    # The queue depths come from the broker at scrape time (this app's embedded SQLite broker: empty).
    assert _value(after, "maskloop_broker_up") == 1
    assert _value(after, "maskloop_queue_depth", queue="gpu") == 0


def test_queue_depth_counts_the_messages_waiting_in_the_embedded_broker(client: TestClient, settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # as `maskloop serve` makes it
    sender = Celery("metrics-test")
    configure(sender, settings)  # the app's own broker: the embedded SQLite file under data_dir
    for _ in range(2):
        sender.send_task("maskloop.export", args=[0], queue="cpu")
    sender.send_task("maskloop.preannotate", args=[0], queue="gpu")
    scraped = _scrape(client)
    assert _value(scraped, "maskloop_queue_depth", queue="cpu") == 2
    assert _value(scraped, "maskloop_queue_depth", queue="gpu") == 1


def test_each_answer_carries_a_request_id(client: TestClient) -> None:
    first, second = client.get("/api/health"), client.get("/api/health")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert client.get("/api/health", headers={"X-Request-ID": "lb-7f3a.1"}).headers["x-request-id"] == "lb-7f3a.1"
    # An id that could forge log fields is replaced, not echoed.
    forged = client.get("/api/health", headers={"X-Request-ID": 'x" "level": "ERROR'}).headers["x-request-id"]
    assert forged != 'x" "level": "ERROR' and len(forged) == 32


def test_the_metrics_token_guards_the_scrape(db: Session, blobs: BlobStore, settings: Settings) -> None:
    guarded = settings.model_copy(update={"metrics_token": SecretStr("scrape-secret-123")})
    with _app(guarded, db, blobs) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-123"}).status_code == 200
    with _app(settings.model_copy(update={"metrics_enabled": False}), db, blobs) as client:
        assert client.get("/metrics").status_code == 404


# --- readiness ------------------------------------------------------------------------------------------------


def test_ready_when_database_broker_and_blob_store_answer(client: TestClient) -> None:
    response = client.get("/api/health/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "database": True,
        "broker": True,
        "blob_store": True,
    }


@pytest.mark.parametrize("down", ["broker", "database", "blob_store"])
def test_not_ready_names_the_part_that_is_down(down: str, db: Session, tmp_path: Path, settings: Settings) -> None:
    closed = free_port()  # nobody listens there
    blobs = LocalBlobStore(tmp_path / "ready-blobs")
    session: Any = db
    if down == "broker":
        settings = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{closed}/0"})
    elif down == "database":
        session = Session(bind=make_engine(f"postgresql+psycopg://nobody@127.0.0.1:{closed}/nothing"))
    else:
        shutil.rmtree(blobs.root)  # the volume is gone
    stream = io.StringIO()
    service_log = logging.getLogger("backend.observability.service")
    service_log.addHandler(handler := json_handler(stream))
    started = time.monotonic()
    try:
        with _app(settings, session, blobs) as c:
            response = c.get("/api/health/ready", headers={"X-Request-ID": f"probe-{down}"})
    finally:
        service_log.removeHandler(handler)
    assert time.monotonic() - started < settings.readiness_timeout_s + 2
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    body = response.json()
    assert body["error"] == "not_ready"
    assert body["details"]["failed"] == [down]
    assert down in body["detail"]
    checks = body["details"]["checks"]
    assert checks[down]["ok"] is False and checks[down]["error"]
    assert all(check["ok"] for name, check in checks.items() if name != down), checks
    # The failure is logged in full by the server, with the id of the probe's request.
    [logged] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert logged["message"] == f"readiness: {down} check failed" and logged["level"] == "WARNING"
    assert logged["request_id"] == f"probe-{down}" and "Traceback" in logged["exception"]


def test_a_hung_broker_is_reported_within_the_timeout(db: Session, blobs: BlobStore, settings: Settings) -> None:
    with socket.socket() as hung:  # accepts connections (the kernel's backlog) and never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        port = hung.getsockname()[1]
        slow = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{port}/0", "readiness_timeout_s": 1.0})
        with _app(slow, db, blobs) as client:
            started = time.monotonic()
            response = client.get("/api/health/ready")
            elapsed = time.monotonic() - started
    assert response.status_code == 503 and response.json()["details"]["failed"] == ["broker"], response.text
    assert response.json()["details"]["checks"]["broker"]["error"] == "no answer within 1 s"
    assert elapsed < 3  # the deadline, not the client's own timeouts, ended the wait (the message says so)


# --- JSON logs --------------------------------------------------------------------------------------------------


def test_a_request_log_line_is_json_with_the_request_id(client: TestClient, world: World) -> None:
    stream = io.StringIO()
    handler = json_handler(stream)
    access = logging.getLogger("maskloop.access")
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        response = client.get(
            f"/api/projects/{world.project.id}/scans",
            headers={**world.headers["lead"], "X-Request-ID": "trace-0042"},
        )
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    assert response.headers["x-request-id"] == "trace-0042"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [line] = [line for line in lines if line.get("request_id") == "trace-0042"]
    assert line["logger"] == "maskloop.access" and line["level"] == "INFO"
    assert line["route"] == SCANS and line["status"] == 200 and line["method"] == "GET"
    assert line["duration_ms"] >= 0 and line["ts"].endswith("+00:00")


# --- live processes: uvicorn workers and a prefork Celery worker share the multiprocess folder ------------------


def _wait_for(check: Any, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tails}")


def _json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            out.append(parsed)
    return out


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str, str, Path]]:
    """PostgreSQL + Redis, a prefork Celery worker with its exporter, and `uvicorn --workers 2`, all writing
    metrics to one multiprocess folder and logging JSON."""
    tmp = tmp_path_factory.mktemp("metrics")
    with build_stack(tmp) as stack:
        api_port, worker_port = free_port(), free_port()
        extra = {
            "MASKLOOP_PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
            "MASKLOOP_WORKER_METRICS_PORT": str(worker_port),
            "MASKLOOP_LOG_FORMAT": "json",
        }
        stack.start_worker("metrics", extra_env=extra)
        api_log = stack.log_dir / "api.log"
        with api_log.open("wb") as out:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "backend.main:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(api_port),
                    "--workers",
                    "2",
                ],
                cwd=ROOT,
                env={**stack.env, **extra},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            api, exporter = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{worker_port}"
            logs = [api_log, stack.log_dir / "worker-metrics.log"]
            _wait_for(lambda: httpx.get(f"{api}/api/health", timeout=1).status_code == 200, 120, "the API", logs)
            _wait_for(lambda: httpx.get(f"{exporter}/metrics", timeout=1).status_code == 200, 120, "the worker", logs)
            yield stack, api, exporter, api_log
        finally:
            os.killpg(server.pid, signal.SIGKILL)  # nothing of it outlives the test: its files are in tmp
            server.wait(timeout=30)


@pytest.mark.slow
def test_live_api_and_worker_metrics_move_through_the_multiprocess_files(live: tuple[Stack, str, str, Path]) -> None:
    stack, api, exporter, api_log = live
    lead = stack.headers["lead"]
    project = stack.project.id
    with httpx.Client(base_url=api, headers=lead, timeout=30) as http:
        for n in range(3):
            response = http.get(f"/api/projects/{project}/scans", headers={"X-Request-ID": f"live-{n}"})
            assert response.status_code == 200 and response.headers["x-request-id"] == f"live-{n}"
        assert http.get("/api/jobs/987654").status_code == 404
        assert http.get("/api/jobs/not-a-number").status_code == 422
        assert http.get("/api/health/ready").status_code == 200

        # Real jobs through the real worker on a small phantom: the weightless classical model succeeds, a UNet
        # whose weights are missing from the blob store fails.
        phantom = generate_phantom((40, 40, 16), (6.0, 6.0, 10.0), seed=3)
        scan = http.post(
            f"/api/projects/{project}/scans",
            files={"file": ("m.nii.gz", to_nifti_gz(phantom.volume, phantom.affine), "application/gzip")},
            data={"case_id": "metrics-case"},
        )
        assert scan.status_code == 201, scan.text
        job_ids = []
        for name, architecture, weights in (("classical-hu", "classical", None), ("no-weights", "unet", "0" * 64)):
            model = http.post(
                f"/api/projects/{project}/models",
                json={"name": name, "architecture": architecture, "structures": ["liver", "spleen"]},
            )
            assert model.status_code == 201, model.text
            with stack.factory() as db:
                version = ModelVersion(model_id=model.json()["id"], number=1, weights_digest=weights, is_promoted=True)
                db.add(version)
                db.commit()
            jobs = http.post(
                f"/api/projects/{project}/preannotate",
                json={"model_version_id": version.id, "scan_ids": [scan.json()["id"]]},
            )
            assert jobs.status_code == 201, jobs.text
            job_ids.append(jobs.json()[0]["id"])
        logs = [api_log, stack.log_dir / "worker-metrics.log"]

        def statuses() -> list[str]:
            return [http.get(f"/api/jobs/{job_id}").json()["status"] for job_id in job_ids]

        _wait_for(lambda: statuses() == ["succeeded", "failed"], 90, "the jobs", logs)

        # The API's /metrics sums every process of the host: both uvicorn workers and the worker's pool child.
        scraped = http.get("/metrics")
        assert scraped.status_code == 200
        samples = _samples(scraped.text)

    requests = "maskloop_http_requests_total"
    assert _value(samples, requests, method="GET", route=SCANS, status="200") == 3
    assert _value(samples, requests, method="GET", route=JOB, status="404") == 1
    assert _value(samples, requests, method="GET", route=JOB, status="422") == 1
    assert _value(samples, requests, method="GET", route=JOB, status="200") >= 1
    assert _value(samples, "maskloop_http_request_duration_seconds_count", method="GET", route=SCANS) == 3

    # Job metrics written by the prefork child, read by the worker's exporter in its main process.
    def jobs_done() -> bool:
        scrape = _samples(httpx.get(f"{exporter}/metrics", timeout=5).text)
        return _value(scrape, "maskloop_job_duration_seconds_count", kind="preannotate") == 2

    _wait_for(jobs_done, 10, "the jobs' durations in the worker's exporter", logs)
    worker = _samples(httpx.get(f"{exporter}/metrics", timeout=5).text)
    duration = "maskloop_job_duration_seconds"
    assert _value(worker, "maskloop_job_starts_total", kind="preannotate") == 2
    assert _value(worker, f"{duration}_count", kind="preannotate", outcome="succeeded") == 1
    assert _value(worker, f"{duration}_count", kind="preannotate", outcome="failed") == 1
    assert _value(worker, f"{duration}_bucket", kind="preannotate", outcome="succeeded", le="+Inf") == 1
    assert _value(worker, f"{duration}_sum", kind="preannotate", outcome="succeeded") > 0
    assert _value(worker, "maskloop_job_failures_total", kind="preannotate", cause="job_failed") == 1
    assert _value(worker, "maskloop_job_failures_total") == 1
    assert _value(worker, "maskloop_broker_up") == 1
    assert {"gpu", "cpu"} <= {dict(labels)["queue"] for name, labels in worker if name == "maskloop_queue_depth"}
    # The API's scrape has it too: one folder per host (as on a single machine) holds every process's files.
    again = _samples(httpx.get(f"{api}/metrics", timeout=10).text)
    assert _value(again, f"{duration}_count", kind="preannotate", outcome="succeeded") == 1
    assert _value(again, "maskloop_job_failures_total", kind="preannotate") == 1
    assert _value(again, requests, method="GET", route="/metrics", status="200") >= 1

    # JSON log lines: the API's carry the request id, the worker's the job id.
    api_lines = _json_lines(api_log)
    [access] = [line for line in api_lines if line.get("request_id") == "live-1"]
    assert access["route"] == SCANS and access["status"] == 200 and access["logger"] == "maskloop.access"
    worker_lines = _json_lines(stack.log_dir / "worker-metrics.log")
    assert {line.get("job_id") for line in worker_lines} >= set(job_ids), worker_lines[-5:]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus package is not installed")
def test_a_real_prometheus_scrapes_the_api_and_the_worker(live: tuple[Stack, str, str, Path]) -> None:
    stack, api, exporter, _ = live
    folder = stack.log_dir / "prometheus"
    folder.mkdir()
    targets = {"api": api.removeprefix("http://"), "workers": exporter.removeprefix("http://")}
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in targets.items()],
    }
    (folder / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log = (folder / "prometheus.log").open("wb")
    command = ["prometheus", f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'tsdb'}"]
    server = subprocess.Popen(
        [*command, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def query(expression: str) -> dict[str, float]:
            answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expression}, timeout=5)
            results = answer.json()["data"]["result"] if answer.status_code == 200 else []
            return {item["metric"].get("job", ""): float(item["value"][1]) for item in results}

        _wait_for(
            lambda: query("up") == {"api": 1.0, "workers": 1.0},
            30,
            "Prometheus to scrape both targets",
            [folder / "prometheus.log"],
        )
        routes = query('sum by (job) (maskloop_http_requests_total{route="/api/health"})')
        assert routes.get("api", 0) >= 1, routes
        assert query("maskloop_broker_up") == {"api": 1.0, "workers": 1.0}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
