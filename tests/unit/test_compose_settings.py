"""docker-compose.yml names only settings that exist: Docker cannot run here, so a typo in a MASKLOOP_* variable
would otherwise pass silently (pydantic-settings ignores unknown variables) until a deployment misbehaves."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from backend.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
VARIABLE = re.compile(r"\bMASKLOOP_([A-Z0-9_]+)")


def test_every_maskloop_variable_in_compose_is_a_setting() -> None:
    text = COMPOSE.read_text()
    named = sorted(set(VARIABLE.findall(text)))
    assert len(named) >= 10, "the compose file should configure the deployment through MASKLOOP_* variables"
    unknown = [f"MASKLOOP_{name}" for name in named if name.lower() not in Settings.model_fields]
    assert not unknown, f"docker-compose.yml names variables that are no setting: {unknown}"


def test_compose_runs_the_blob_store_on_s3_by_default() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    env = compose["x-maskloop-env"]
    assert env["MASKLOOP_BLOB_BACKEND"].endswith(":-s3}")
    assert "minio" in compose["services"]
    for service in ("api", "worker-cpu", "worker-gpu"):
        assert compose["services"][service]["environment"] == env
        assert "blob-bucket" in compose["services"][service]["depends_on"]
    # The defaults compose passes parse as settings (types, literals).
    defaults = {
        key.removeprefix("MASKLOOP_").lower(): re.sub(r"^\$\{[A-Z0-9_]+:-(.*)\}$", r"\1", str(value))
        for key, value in env.items()
        if key.startswith("MASKLOOP_") and ":-" in str(value) and "${" not in str(value)[2:]
    }
    settings = Settings(**defaults)  # type: ignore[arg-type]
    assert settings.blob_backend == "s3" and settings.s3_bucket == "maskloop-blobs"


def _defaults(value: str) -> str:
    """A compose value with each ${VAR:-default} replaced by its default (as compose runs it with no overrides)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def test_compose_mounts_the_import_root_where_the_api_and_the_import_workers_read_it() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    root = _defaults(compose["x-maskloop-env"]["MASKLOOP_IMPORT_ROOT"])
    assert root.startswith("/")
    assert Settings(import_root=root).import_root == Path(root)
    # The API checks the folder a lead names; the cpu workers import its cases: both see it at the same path.
    assert "cpu" in compose["services"]["worker-cpu"]["command"]
    for service in ("api", "worker-cpu"):
        targets = [_defaults(str(volume)).split(":")[1] for volume in compose["services"][service]["volumes"]]
        assert root in targets, f"{service} does not mount the import root {root}: {targets}"
