"""`maskloop register-model`, `promote` (and roll back) and `attention`: drive the model loop from a terminal.

The same flows as the HTTP API: a weights file is checked by a worker before it counts (the command waits for the
verdict), promotion goes through the promotion gate, a rollback is recorded with its reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from backend.cli.access import acting_member, scan_filter, scan_ids_of_cases
from backend.cli.common import console, fail, refuse
from backend.core.blobstore import get_blob_store
from backend.core.config import get_settings
from backend.core.db import session_scope
from backend.core.errors import DomainError
from backend.flows import demo
from backend.flows import jobs as job_flows
from backend.flows import registry as registry_flows
from backend.flows.demo import DEMO_ADMIN
from backend.registry import service as registry


def _json_option(value: str | None, name: str) -> dict[str, Any]:
    """A JSON object given on the command line ({} when absent)."""
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        refuse(f"--{name} must be a JSON object: {exc.msg}")
    if not isinstance(parsed, dict):
        refuse(f"--{name} must be a JSON object")
    return parsed


def _ids(value: str | None, name: str) -> list[int] | None:
    """Comma-separated integers (None when the option is absent)."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        refuse(f"--{name} must be comma-separated integers")


def register_model(
    project: Annotated[str, typer.Option(help="project slug")],
    name: Annotated[str | None, typer.Option(help="model name")] = None,
    architecture: Annotated[str | None, typer.Option(help="unet, segresnet, classical, …")] = None,
    structures: Annotated[str | None, typer.Option(help="comma-separated structure names or aliases")] = None,
    config: Annotated[str | None, typer.Option(help="network config as JSON")] = None,
    preprocessing: Annotated[str | None, typer.Option(help="preprocessing as JSON")] = None,
    inference: Annotated[str | None, typer.Option(help="sliding-window settings as JSON")] = None,
    weights: Annotated[Path | None, typer.Option(help="a torch state_dict file: the first version")] = None,
    bundled: Annotated[
        str | None, typer.Option(help=f"register a bundled model instead: {', '.join(sorted(demo.BUNDLED_MODELS))}")
    ] = None,
    promote: Annotated[bool, typer.Option(help="promote the uploaded version (the first one of a model)")] = False,
    as_user: Annotated[str, typer.Option("--as", help="e-mail of the lead")] = DEMO_ADMIN,
) -> None:
    """Register a model in a project (optionally with its first weights, checked by a worker), or a bundled one."""
    if bundled:
        if name or architecture or structures or weights:
            refuse("--bundled registers a shipped model as it is: no --name, --architecture, --structures, --weights")
        try:
            with session_scope() as db:
                proj, _actor = acting_member(db, project, as_user)
                found = demo.register_bundled_model(db, get_blob_store(), proj, bundled)
        except DomainError as exc:
            fail(exc)
        if not found:
            refuse(f"the bundled weights of {bundled!r} are not built; run `maskloop train --phantom` first")
        console.print(f"registered and promoted the bundled model {bundled!r} in {project}")
        return
    if not (name and architecture and structures):
        refuse("give --name, --architecture and --structures (or --bundled NAME)")
    if weights is not None and not weights.is_file():
        refuse(f"no weights file at {weights}")
    settings = get_settings()
    try:
        with session_scope() as db:
            proj, actor = acting_member(db, project, as_user)
            model = registry_flows.register_model(
                db,
                proj,
                name=name,
                architecture=architecture,
                structures=[s.strip() for s in structures.split(",") if s.strip()],
                config=_json_option(config, "config"),
                preprocessing=_json_option(preprocessing, "preprocessing"),
                inference=_json_option(inference, "inference"),
                actor=actor,
            )
            console.print(f"registered model {model.name!r} ({model.architecture}: {', '.join(model.structures)})")
            if weights is None:
                return
            console.print("checking the weights on a worker (load into the network, one forward pass) …")
            version = registry_flows.add_version(
                db,
                get_blob_store(),
                model,
                weights=weights.read_bytes(),
                provenance={"file": weights.name, "registered_with": "maskloop register-model"},
                validation={},
                actor=actor,
                wait_s=settings.weights_check_wait_s,
                claim_wait_s=settings.weights_check_claim_wait_s,
            )
            console.print(f"version {version.number}: weights {version.weights_status}")
            if promote:
                registry_flows.promote(db, version, actor=actor, reason="registered with maskloop register-model")
                console.print(f"version {version.number} promoted")
    except DomainError as exc:
        fail(exc)


def promote(
    project: Annotated[str, typer.Option(help="project slug")],
    model: Annotated[str, typer.Option(help="model name")],
    version: Annotated[int | None, typer.Option(help="version number to promote (through the promotion gate)")] = None,
    rollback_to: Annotated[
        int | None, typer.Option("--rollback-to", help="an earlier version number to make the promoted one again")
    ] = None,
    reason: Annotated[str, typer.Option(help="why (required for a rollback; kept with the decision)")] = "",
    as_user: Annotated[str, typer.Option("--as", help="e-mail of the lead")] = DEMO_ADMIN,
) -> None:
    """Promote a model version (refused unless it passed the promotion gate), or roll back to an earlier one."""
    if (version is None) == (rollback_to is None):
        refuse("give either --version N (promote) or --rollback-to N --reason '…' (roll back)")
    if rollback_to is not None and not reason.strip():
        refuse("a rollback needs --reason")
    number = rollback_to if rollback_to is not None else version
    try:
        with session_scope() as db:
            proj, actor = acting_member(db, project, as_user)
            found = registry.get_model_by_name(db, proj.id, model)
            target = next((v for v in registry.list_versions(db, found) if v.number == number), None)
            if target is None:
                raise DomainError(f"model {model!r} has no version {number}")
            if rollback_to is not None:
                registry_flows.roll_back(db, target, reason=reason, actor=actor)
            else:
                registry_flows.promote(db, target, actor=actor, reason=reason)
            decision = registry.decisions(db, found)[-1]
            table = Table("decision", "from", "to", "reason", title=f"{model}: version {number} is promoted")
            names = {v.id: str(v.number) for v in registry.list_versions(db, found)}
            table.add_row(
                decision.kind,
                names.get(decision.from_version_id or 0, "—"),
                names.get(decision.to_version_id or 0, "—"),
                decision.reason[:200],
            )
    except DomainError as exc:
        fail(exc)
    console.print(table)


def attention(
    project: Annotated[str, typer.Option(help="project slug")] = "demo",
    case: Annotated[list[str] | None, typer.Option(help="case id (repeatable)")] = None,
    all_scans: Annotated[bool, typer.Option("--all", help="every scan of the project")] = False,
    site: Annotated[str | None, typer.Option(help="filter: site")] = None,
    phase: Annotated[str | None, typer.Option(help="filter: contrast phase")] = None,
    tumor: Annotated[bool | None, typer.Option(help="filter: tumour flag")] = None,
    versions: Annotated[
        str | None, typer.Option(help="comma-separated model version ids (default: the newest of every model)")
    ] = None,
    as_user: Annotated[str, typer.Option("--as", help="e-mail of the requesting lead")] = DEMO_ADMIN,
) -> None:
    """Queue attention maps (where ≥ 2 models disagree or doubt) and priorities for a project's scans."""
    model_version_ids = _ids(versions, "versions")
    try:
        with session_scope() as db:
            proj, actor = acting_member(db, project, as_user)
            scan_ids = scan_ids_of_cases(db, proj, case)
            launched = job_flows.launch_attention(
                db,
                proj,
                scan_ids=scan_ids,
                flt=scan_filter(site, phase, tumor),
                all_scans=all_scans,
                model_version_ids=model_version_ids,
                actor=actor,
            )
            job_ids = [j.id for j in launched]
    except DomainError as exc:
        fail(exc)
    shown = f"{job_ids[:10]}{' …' if len(job_ids) > 10 else ''}"
    console.print(f"queued {len(job_ids)} attention jobs: {shown} (each waits for its scan's pre-annotations)")
