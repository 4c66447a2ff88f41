"""`maskloop create-user` and `create-project`: accounts, API tokens, projects with their label schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from backend.auth import service as auth
from backend.cli.common import console, fail
from backend.core.blobstore import get_blob_store
from backend.core.config import get_settings
from backend.core.db import session_scope
from backend.core.errors import DomainError
from backend.flows import accounts as account_flows
from backend.flows import projects as project_flows


def create_user(
    email: str,
    password: Annotated[str | None, typer.Option(help="omit for a service account")] = None,
    name: Annotated[str, typer.Option(help="display name")] = "",
    admin: Annotated[bool, typer.Option(help="platform administrator")] = False,
    service: Annotated[bool, typer.Option(help="service account for model workers")] = False,
    project: Annotated[str | None, typer.Option(help="project slug to join")] = None,
    role: Annotated[str, typer.Option(help="role in --project")] = "annotator",
    token: Annotated[bool, typer.Option(help="print a new API token for the account")] = False,
) -> None:
    """Create a user (optionally joining a project, optionally with an API token)."""
    try:
        with session_scope() as db:
            account = account_flows.create_account(
                db,
                email,
                password,
                name,
                get_settings(),
                is_admin=admin,
                is_service=service,
                project_slug=project,
                role=role,
                with_token=token,
            )
    except DomainError as exc:
        fail(exc)
    console.print(f"created user {email}")
    if account.token:
        console.print(f"API token (shown once): {account.token}")


def create_project(
    slug: str,
    name: Annotated[str, typer.Option(help="display name")] = "",
    owner: Annotated[str, typer.Option(help="e-mail of the creating user")] = "",
    schema: Annotated[Path | None, typer.Option(help="label schema JSON; PanTS by default")] = None,
) -> None:
    """Create a project with a label schema (PanTS by default)."""
    try:
        with session_scope() as db:
            creator = auth.get_user_by_email(db, owner)
            structures, schema_name = None, None
            if schema is not None:
                data = json.loads(schema.read_text())
                structures, schema_name = data["structures"], data.get("name", slug)
            project_flows.create_project(
                db, get_blob_store(), slug, name or slug, structures=structures, schema_name=schema_name, actor=creator
            )
    except DomainError as exc:
        fail(exc)
    console.print(f"created project {slug}")
