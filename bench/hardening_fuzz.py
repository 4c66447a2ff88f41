"""API contract fuzzing: schemathesis over every operation of a live server; server errors and schema violations.

Set-up: a fresh PostgreSQL database (migrated with Alembic), a real uvicorn process on a free loopback port, a
platform admin, a project lead (whose bearer token every request carries) in a PanTS-schema project and one
tiny phantom scan imported through the API, so ids 1.. name real objects. Then the schemathesis CLI runs in a
subprocess over the server's own `/openapi.json` with a fixed seed and deterministic generation (phases:
examples, coverage, fuzzing; positive and negative data), with these checks:

* `not_a_server_error` — no 5xx answer;
* `status_code_conformance`, `content_type_conformance`, `response_schema_conformance` — every status the
  server answers is documented for the operation, with the documented media type and body schema.

Figures: `fuzz_server_errors` (failures of the first check) and `fuzz_schema_violations` (failures of the three
others), counted as schemathesis's unique failures (goal 0 each), with `--max-examples 20` per operation.
The operations that revoke the caller's own token (logout, revoking a session or token) run in a second pass
after all the others, so that the token the run uses stays valid while the rest is tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import Row
from bench.core_spine import pg_database, uvicorn_server

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "fuzz-password-0123456789"
ADMIN_EMAIL = "fuzz-admin@maskloop.local"
LEAD_EMAIL = "fuzz-lead@maskloop.local"
SERVER_ERROR_CHECKS = frozenset({"not_a_server_error"})
SCHEMA_CHECKS = ("status_code_conformance", "content_type_conformance", "response_schema_conformance")
# Operations that revoke the bearer token every other request relies on: fuzzed last, in a pass of their own.
SELF_REVOKING_PATHS = ("/api/auth/logout", "/api/auth/sessions/{session_id}", "/api/auth/tokens/{token_id}")


@dataclass
class FuzzTarget:
    """A live server to fuzz: its base URL, a lead's bearer token, the seeded ids and the server log."""

    base_url: str
    token: str
    project_id: int
    scan_id: int
    log_path: Path


@dataclass
class FuzzResult:
    """What a schemathesis run found: failure groups by kind, test cases run, and the raw report."""

    server_errors: int
    schema_violations: int
    test_cases: int
    seconds: float
    failures: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    output: str = ""

    def describe(self) -> str:
        """The failures (and the tail of schemathesis's own output) for an assertion message."""
        groups = "\n".join(
            f"- {f.get('type')} {f.get('title')} x{f.get('count')} on {f.get('operations')}" for f in self.failures
        )
        errors = "\n".join(f"- error: {e.get('title')} x{e.get('count')}" for e in self.errors)
        return f"{groups}\n{errors}\n--- schemathesis output (tail) ---\n{self.output[-12000:]}"


def seed_users(url: str) -> int:
    """A platform admin, a PanTS-schema project and its lead, through the service layer; returns the project id."""
    from sqlalchemy.orm import Session

    from backend.auth import service as auth
    from backend.core.db import make_engine
    from backend.projects import service as projects

    engine = make_engine(url)
    try:
        with Session(engine) as db:
            admin = auth.create_user(db, ADMIN_EMAIL, PASSWORD, "Fuzz Admin", is_admin=True)
            project = projects.create_project(db, "fuzz", "Fuzz", admin)
            lead = auth.create_user(db, LEAD_EMAIL, PASSWORD, "Fuzz Lead")
            projects.set_membership(db, project.id, lead, "lead", admin)
            db.commit()
            return int(project.id)
    finally:
        engine.dispose()


def _tiny_scan() -> bytes:
    """A 24×24×12 phantom CT as .nii.gz."""
    from backend.imaging.nifti import to_nifti_gz
    from backend.imaging.phantom import generate_phantom

    phantom = generate_phantom((24, 24, 12), (8.0, 8.0, 16.0), seed=3, lesion=False)
    return to_nifti_gz(phantom.volume, phantom.affine)


@contextmanager
def fuzz_target(workdir: Path) -> Iterator[FuzzTarget]:
    """A migrated database, a live server, a lead's token and one imported scan; all removed on exit."""
    with pg_database(f"maskloop_fuzz_{os.getpid()}") as url:
        project_id = seed_users(url)
        with uvicorn_server(url, workdir) as (base, log_path):
            login = httpx.post(f"{base}/api/auth/login", json={"email": LEAD_EMAIL, "password": PASSWORD}, timeout=30)
            if login.status_code != 200:
                raise RuntimeError(f"login failed: {login.status_code} {login.text[:500]}")
            token = str(login.json()["access_token"])
            imported = httpx.post(
                f"{base}/api/projects/{project_id}/scans",
                headers={"Authorization": f"Bearer {token}"},
                files={"file": ("fuzz-1.nii.gz", _tiny_scan(), "application/gzip")},
                timeout=60,
            )
            if imported.status_code != 201:
                log = log_path.read_text(errors="replace")[-4000:]
                raise RuntimeError(f"scan import failed: {imported.status_code} {imported.text[:500]}\n{log}")
            yield FuzzTarget(base, token, project_id, int(imported.json()["id"]), log_path)


def _schemathesis(
    target: FuzzTarget, workdir: Path, name: str, selection: list[str], max_examples: int, seed: int, timeout_s: float
) -> dict[str, Any]:
    """One schemathesis CLI run over the selected operations; returns its JSON report plus its output."""
    report = workdir / f"schemathesis-{name}.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{target.base_url}/openapi.json",
        "--checks",
        ",".join(["not_a_server_error", *SCHEMA_CHECKS]),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--generation-deterministic",
        "--no-shrink",
        "--continue-on-failure",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
        "--header",
        f"Authorization: Bearer {target.token}",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
        *selection,
    ]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout_s)
    output = done.stdout + done.stderr
    if not report.exists():
        raise RuntimeError(f"schemathesis wrote no report (exit {done.returncode}):\n{output[-6000:]}")
    document: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    document["output"] = output
    return document


def run_schemathesis(
    target: FuzzTarget, workdir: Path, *, max_examples: int, seed: int = 20261206, timeout_s: float = 600
) -> FuzzResult:
    """Run schemathesis over every operation of the target; count server errors and schema violations.

    The operations that revoke the caller's own credentials run in a second pass, after all the others."""
    revoking = [arg for path in SELF_REVOKING_PATHS for arg in ("--include-path", path)]
    others = [arg for path in SELF_REVOKING_PATHS for arg in ("--exclude-path", path)]
    started = time.monotonic()
    documents = [
        _schemathesis(target, workdir, "main", others, max_examples, seed, timeout_s),
        _schemathesis(target, workdir, "revoking", revoking, max_examples, seed, timeout_s),
    ]
    seconds = time.monotonic() - started
    failures = [f for d in documents for f in d.get("failures") or []]
    errors = [e for d in documents for e in d.get("errors") or []]
    server = sum(int(f.get("count", 1)) for f in failures if _check_of(f) in SERVER_ERROR_CHECKS)
    schema = sum(int(f.get("count", 1)) for f in failures if _check_of(f) not in SERVER_ERROR_CHECKS)
    cases = sum(int((d.get("test_cases") or {}).get("generated") or 0) for d in documents)
    output = "\n".join(str(d["output"]) for d in documents)
    return FuzzResult(server, schema, cases, seconds, failures, errors, output)


def _check_of(failure: dict[str, Any]) -> str:
    """The check a failure group belongs to: `not_a_server_error` for 5xx answers, else the failure's type."""
    if failure.get("type") == "ServerError" or str(failure.get("title", "")).lower().startswith("server error"):
        return "not_a_server_error"
    return str(failure.get("type") or failure.get("code") or "")


def run() -> list[Row]:
    """Fuzz every operation with --max-examples 20; rows fuzz_server_errors and fuzz_schema_violations."""
    with tempfile.TemporaryDirectory(prefix="maskloop-fuzz-") as tmp, fuzz_target(Path(tmp)) as target:
        result = run_schemathesis(target, Path(tmp), max_examples=20)
    if result.errors:
        print(f"  [hardening_fuzz] schemathesis errors:\n{result.describe()}", file=sys.stderr)
    return [
        Row(
            "fuzz_server_errors",
            "schemathesis: server errors (5xx)",
            result.server_errors,
            "count",
            "0",
            result.server_errors == 0,
        ),
        Row(
            "fuzz_schema_violations",
            "schemathesis: schema violations (status, type, body)",
            result.schema_violations,
            "count",
            "0",
            result.schema_violations == 0,
        ),
        Row("fuzz_test_cases", "schemathesis: test cases run", result.test_cases, "count"),
        Row("fuzz_run_s", "schemathesis: run time", round(result.seconds, 1), "s"),
    ]
