"""One error model: every 4xx/5xx is `{detail, error, details?}`, documented on every operation, with strict ids
and cleaned file names; and a bounded schemathesis run against a live server finds no server error and no answer
that the OpenAPI document does not describe."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from backend.core.errors import InvalidInput, TooManyRequests, json_safe
from backend.core.filenames import clean_file_name
from backend.http_errors import error_response
from backend.imaging.nifti import to_nifti_gz
from bench.hardening_fuzz import FuzzTarget, fuzz_target, run_schemathesis
from tests.conftest import World
from tests.factories import small_phantom

ERROR_STATUSES = ("401", "403", "404", "409", "422", "429", "503")


def _error_body(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    """The response has the status and exactly the one error body's keys, with this machine code."""
    assert response.status_code == status, response.text
    body = dict(response.json())
    assert set(body) <= {"detail", "error", "details"}, body
    assert isinstance(body["detail"], str) and body["error"] == error, body
    assert isinstance(body.get("details", {}), dict), body
    return body


# --- the body ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)
def test_domain_error_fields_move_into_details(client: TestClient, world: World) -> None:
    phantom = small_phantom(seed=4)
    content = to_nifti_gz(phantom.volume, phantom.affine)
    url, lead = f"/api/projects/{world.project.id}/scans", world.headers["lead"]
    first = client.post(url, headers=lead, files={"file": ("dup.nii.gz", content, "application/gzip")})
    assert first.status_code == 201, first.text
    again = client.post(url, headers=lead, files={"file": ("dup.nii.gz", content, "application/gzip")})
    body = _error_body(again, 409, "conflict")
    assert body["details"] == {"case_id": "dup"} and "case_id" not in body


@pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)
def test_validation_errors_have_the_one_body(client: TestClient, world: World) -> None:
    url, lead = f"/api/projects/{world.project.id}/assignments", world.headers["lead"]
    body = _error_body(client.post(url, headers=lead, json={"user_id": 1}), 422, "validation_error")
    assert body["detail"] == "body.scan_ids: Field required"
    errors = body["details"]["errors"]
    assert errors[0]["loc"] == ["body", "scan_ids"] and errors[0]["type"] == "missing"
    # A malformed JSON body is the same kind of error, with the same shape.
    broken = client.post(url, headers={**lead, "Content-Type": "application/json"}, content=b"{not json")
    _error_body(broken, 422, "validation_error")


@pytest.mark.parametrize("value", [True, False, 1.0, "1", 0, -3, 2**31])
def test_ids_in_bodies_are_strict_integers(client: TestClient, world: World, value: object) -> None:
    url, lead = f"/api/projects/{world.project.id}/assignments", world.headers["lead"]
    for payload in ({"scan_ids": [value], "user_id": None}, {"scan_ids": [1], "user_id": value}):
        body = _error_body(client.post(url, headers=lead, json=payload), 422, "validation_error")
        assert str(body["detail"]).startswith(("body.scan_ids.0:", "body.user_id:")), body


def test_booleans_in_bodies_are_strict(client: TestClient, world: World) -> None:
    payload = {"email": "new@example.org", "password": "a-long-password-123", "is_admin": 1}
    body = _error_body(
        client.post("/api/users", headers=world.headers["platform_admin"], json=payload), 422, "validation_error"
    )
    assert str(body["detail"]).startswith("body.is_admin:"), body


@pytest.mark.parametrize("path", ["/api/scans/0", "/api/scans/2147483648", "/api/scans/99999999999999999999"])
def test_ids_in_paths_are_bounded(client: TestClient, world: World, path: str) -> None:
    body = _error_body(client.get(path, headers=world.headers["lead"]), 422, "validation_error")
    assert str(body["detail"]).startswith("path.scan_id:"), body


def test_framework_errors_have_the_one_body(client: TestClient, world: World) -> None:
    _error_body(client.get("/api/no-such-route", headers=world.headers["lead"]), 404, "not_found")
    wrong = client.delete("/api/health")
    _error_body(wrong, 405, "method_not_allowed")
    assert "GET" in wrong.headers["allow"]
    # GET and POST of one path are separate routes: a 405 names both (Starlette's own names only the first).
    both = client.put("/api/projects", headers=world.headers["lead"], json={})
    _error_body(both, 405, "method_not_allowed")
    assert set(both.headers["allow"].split(", ")) >= {"GET", "POST"}
    unauthenticated = client.get(f"/api/projects/{world.project.id}")
    _error_body(unauthenticated, 401, "unauthenticated")
    assert unauthenticated.headers["www-authenticate"] == "Bearer"


def test_retry_after_comes_from_details_and_details_are_json_safe() -> None:
    throttled = error_response(429, "slow down", TooManyRequests.code, {"retry_after": 2.5})
    assert throttled.headers["retry-after"] == "3"
    assert json.loads(bytes(throttled.body))["details"] == {"retry_after": 2.5}
    busy = error_response(503, "database unavailable", "unavailable")
    assert busy.headers["retry-after"] == "1"
    # A NaN affine in an InvalidInput would make the JSON encoder raise: the answer must stay a 422.
    error = InvalidInput("bad affine", affine=[[math.nan, 1.0]], raw=b"\x00\xff", when=Path("/x"))
    rendered = error_response(422, error.message, error.code, error.details)
    assert json.loads(bytes(rendered.body))["details"] == {"affine": [[None, 1.0]], "raw": "<2 bytes>", "when": "/x"}
    assert json_safe({1: {2, 3}}) == {"1": [2, 3]}


# --- the OpenAPI document ------------------------------------------------------------------------------------


def test_every_operation_documents_the_error_body(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert components["ErrorBody"]["required"] == ["detail", "error"]
    assert "HTTPValidationError" not in components
    operations = [(p, m, op) for p, item in schema["paths"].items() for m, op in item.items()]
    assert len(operations) > 80
    for path, method, op in operations:
        if path == "/api/health":
            continue
        for status in ERROR_STATUSES:
            documented = op["responses"].get(status, {}).get("content", {}).get("application/json", {})
            assert documented.get("schema") == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
        if "requestBody" in op:
            assert {"400", "413"} <= set(op["responses"]), (method, path)
    assert "304" in schema["paths"]["/api/scans/{scan_id}/volume"]["get"]["responses"]
    assert "304" in schema["paths"]["/api/versions/{version_id}/masks/{structure}"]["get"]["responses"]


# --- stored file names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("../../../../outside.nii.gz", "outside.nii.gz"),
        ("..\\..\\windows\\scan.nii", "scan.nii"),
        ("C:\\data\\ct.nii.gz", "ct.nii.gz"),
        ("a\x00b\x1b[0m\u202e.nii.gz", "ab[0m.nii.gz"),
        ("..", "upload"),
        ("", "upload"),
        ("x" * 400 + ".nii.gz", "x" * 248 + ".nii.gz"),
    ],
)
def test_clean_file_name(raw: str, clean: str) -> None:
    assert clean_file_name(raw) == clean


def test_uploaded_file_name_is_stored_cleaned(client: TestClient, world: World) -> None:
    phantom = small_phantom(seed=5)
    response = client.post(
        f"/api/projects/{world.project.id}/scans",
        headers=world.headers["lead"],
        files={"file": ("../../../../outside.nii.gz", to_nifti_gz(phantom.volume, phantom.affine), "application/gzip")},
        data={"case_id": "outside"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["source_name"] == "outside.nii.gz"


# --- schemathesis against a live server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_target() -> Iterator[tuple[FuzzTarget, Path]]:
    """A live uvicorn server on a fresh PostgreSQL database with a lead, a project and a tiny scan."""
    with tempfile.TemporaryDirectory(prefix="maskloop-fuzz-") as tmp, fuzz_target(Path(tmp)) as target:
        yield target, Path(tmp)


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(live_target: tuple[FuzzTarget, Path]) -> None:
    target, workdir = live_target
    # Every operation: the coverage phase (boundary and wrong-typed values) plus 2 fuzzed examples each.
    result = run_schemathesis(target, workdir, max_examples=2, timeout_s=240)
    assert result.test_cases > 1000, result.describe()
    assert not result.errors, result.describe()
    assert result.server_errors == 0, result.describe()
    assert result.schema_violations == 0, result.describe()
