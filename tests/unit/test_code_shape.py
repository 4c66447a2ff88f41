"""The code keeps the shape ARCHITECTURE.md promises: HTTP-only routers, one migration head, short modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

ROOT = Path(__file__).resolve().parents[2]
ROUTERS = sorted((ROOT / "backend").glob("*/router.py"))
# Module size limit for hand-written code (the generated surface-distance table is data, not code).
MAX_LINES = 600
GENERATED = {ROOT / "backend" / "evaluation" / "surface_tables.py"}
# Calls that mean a router runs SQL or owns the transaction.
FORBIDDEN_CALLS = {"commit", "rollback", "execute", "scalar", "scalars", "select", "update", "delete", "insert", "text"}


def _imports(tree: ast.AST) -> set[str]:
    """Every module a file imports from."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_there_are_routers() -> None:
    """The check below is not vacuous."""
    assert len(ROUTERS) >= 12


@pytest.mark.parametrize("path", ROUTERS, ids=lambda p: p.parent.name)
def test_routers_neither_commit_nor_run_sql(path: Path) -> None:
    """A router parses HTTP, calls a flow or a service and serialises: no commit, rollback or SQL."""
    tree = ast.parse(path.read_text())
    assert not {m for m in _imports(tree) if m == "sqlalchemy" or m.startswith("sqlalchemy.")}
    # `delete`/`update` may be FastAPI decorators (router.delete) — those are attributes of `router`, so only
    # flag calls on anything else.
    offending = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "router":
                continue
            if node.func.attr in FORBIDDEN_CALLS:
                offending.add(f"{ast.unparse(node.func)} (line {node.lineno})")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            offending.add(f"{node.func.id} (line {node.lineno})")
    assert not offending, f"{path.relative_to(ROOT)} commits or runs SQL: {sorted(offending)}"


def test_alembic_has_exactly_one_head() -> None:
    """Several changes add migrations; two heads would make `alembic upgrade head` fail."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    heads = ScriptDirectory.from_config(config).get_heads()
    assert len(heads) == 1, f"several Alembic heads: {heads}"


def test_no_hand_written_module_is_too_long() -> None:
    """No hand-written module in backend/ or worker/ grows past the size one can hold in one's head."""
    long = {
        str(path.relative_to(ROOT)): n
        for folder in ("backend", "worker")
        for path in (ROOT / folder).rglob("*.py")
        if path not in GENERATED and (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
