"""A real stack for worker tests: the shared ``bench.worker_stack`` (the benches use it without the test suite)."""

from __future__ import annotations

from bench.worker_stack import ENV_KEYS, PASSWORD, ROOT, Stack, build_stack, create_pg_database, drop_pg_database
from tests import conftest

# The stack's users log in with the test suite's password.
assert PASSWORD == conftest.PASSWORD, "bench.worker_stack.PASSWORD must equal tests.conftest.PASSWORD"

__all__ = ["ENV_KEYS", "ROOT", "Stack", "build_stack", "create_pg_database", "drop_pg_database"]
