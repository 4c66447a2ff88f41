"""The one access rule for a project's objects: load the object named in the path, then check the caller's project role.

Each domain declares its object once — how to load it by id, which project it belongs to, what to call it — and gets
a dependency factory keyed by permission (``scan_access("read")``) plus its ``require`` shorthand for endpoint
signatures. Outsiders get 404 naming the object ("scan 7 not found"), exactly as for an id that does not exist, so ids
reveal nothing; members whose role lacks the permission get 403; an optional ``hidden`` rule (reader blinding) turns
an object the caller may not see into the same 404.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from fastapi import Depends
from sqlalchemy.orm import Session

from backend.auth.dependencies import CurrentUser, DbSession
from backend.core.errors import NotFound
from backend.core.ids import PathId
from backend.models import User
from backend.projects import service as projects

Loaded = TypeVar("Loaded")
Access = TypeVar("Access")


def authorize_or_404(db: Session, user: User, project_id: int, permission: str, what: str) -> str:
    """The caller's role for a permission, or NotFound naming `what`: outsiders never learn that it exists."""
    try:
        return projects.authorize(db, user, project_id, permission)
    except NotFound as exc:
        raise NotFound(f"{what} not found") from exc


class ObjectAccess(Generic[Loaded, Access]):
    """How endpoints reach one kind of project object; call it with a permission to get the FastAPI dependency."""

    def __init__(
        self,
        load: Callable[[Session, int], Loaded],
        project_of: Callable[[Loaded], int],
        what: str,
        *,
        param: str,
        grant: Callable[[Loaded, User, str], Access],
        hidden: Callable[[Session, Loaded, User], bool] | None = None,
    ) -> None:
        self.load = load
        self.project_of = project_of
        self.what = what
        self.param = param
        self.grant = grant
        self.hidden = hidden
        # FastAPI reads a dependency's parameters from its signature: the object's path id keeps its own name
        # (scan_id, version_id, ...) so the URL templates and the OpenAPI schema stay as they are.
        self._signature = inspect.Signature(
            [
                inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, annotation=PathId),
                inspect.Parameter("db", inspect.Parameter.KEYWORD_ONLY, annotation=DbSession),
                inspect.Parameter("user", inspect.Parameter.KEYWORD_ONLY, annotation=CurrentUser),
            ]
        )

    def check(self, db: Session, user: User, ident: int, permission: str) -> Access:
        """Load object `ident` and check the caller's permission on its project (404 for outsiders, 403 if lacking)."""
        loaded = self.load(db, ident)
        name = f"{self.what} {ident}"
        role = authorize_or_404(db, user, self.project_of(loaded), permission, name)
        if self.hidden is not None and self.hidden(db, loaded, user):
            raise NotFound(f"{name} not found")
        return self.grant(loaded, user, role)

    def __call__(self, permission: str) -> Callable[..., Access]:
        """A dependency that loads the object named by the path and checks `permission` on its project."""

        def dependency(**values: Any) -> Access:
            return self.check(values["db"], values["user"], values[self.param], permission)

        dependency.__signature__ = self._signature  # type: ignore[attr-defined]
        return dependency

    def require(self, permission: str) -> Access:
        """Shorthand for Depends(access(permission)) in endpoint signatures."""
        return Depends(self(permission))


def object_access(
    load: Callable[[Session, int], Loaded],
    project_of: Callable[[Loaded], int],
    what: str,
    *,
    param: str,
    grant: Callable[[Loaded, User, str], Access],
    hidden: Callable[[Session, Loaded, User], bool] | None = None,
) -> ObjectAccess[Loaded, Access]:
    """Declare a project object's access: its getter, its project, its name in 404s, its path parameter."""
    return ObjectAccess(load, project_of, what, param=param, grant=grant, hidden=hidden)
