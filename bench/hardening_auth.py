"""Sign-in timing benchmark: does a wrong password on a known e-mail take as long as any password on an unknown one?

Set-up: a fresh PostgreSQL database (migrated with Alembic), a real uvicorn server process on a free loopback
port, and 50 accounts whose passwords are hashed with the production argon2 parameters (the default
`PasswordHasher`: 64 MiB, 3 passes, 4 lanes).

Figures (names are the results.json keys):

* `login_known_p50_ms`: median client-side time of `POST /api/auth/login` with a wrong password for a known
  account, over 50 single attempts, each on a different account;
* `login_unknown_p50_ms`: the same for 50 e-mails no account has;
* `login_unknown_known_time_ratio` = unknown median / known median (goal 0.8–1.25: timing reveals nothing).

Every attempt comes from its own loopback address (127.0.1.x) on a fresh connection, and every account or
unknown e-mail is tried once, so no throttle fires (each answer is checked to be the 401). Known and unknown
attempts alternate, so background load affects both alike; two warm-up attempts come first (the server makes
its dummy hash on first use).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench import Row
from bench.core_spine import BenchError, pg_database, uvicorn_server

ATTEMPTS = 50
PASSWORD = "bench-correct-horse-battery"


def _log(message: str) -> None:
    """A progress line on stderr."""
    print(f"  [hardening_auth] {message}", file=sys.stderr, flush=True)


def _create_accounts(url: str, count: int) -> list[str]:
    """Create `count` accounts with a production-strength password hash; their e-mails.

    They share one hash (same password, same salt): verifying costs the same, and set-up takes one hash, not 51.
    """
    from sqlalchemy.orm import Session

    from backend.auth import service as auth
    from backend.core.db import make_engine
    from backend.models import User

    engine = make_engine(url)
    emails = [f"known{i}@bench.example" for i in range(count)]
    password_hash = auth.hash_password(PASSWORD)
    try:
        with Session(engine) as db:
            db.add_all(
                User(email=email, display_name=email.split("@")[0], password_hash=password_hash) for email in emails
            )
            db.commit()
    finally:
        engine.dispose()
    return emails


def _attempt(base: str, address: str, email: str) -> float:
    """One wrong-password sign-in from a given loopback address on a fresh connection; seconds it took."""
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=base, transport=transport, timeout=60) as client:
        start = time.perf_counter()
        response = client.post("/api/auth/login", json={"email": email, "password": "wrong-password"})
        elapsed = time.perf_counter() - start
    if response.status_code != 401:
        raise BenchError(
            f"sign-in of {email} from {address}: expected 401, got {response.status_code}: {response.text}"
        )
    return elapsed


def run() -> list[Row]:
    """Run the sign-in timing benchmark and return its figures."""
    with ExitStack() as stack:
        t0 = time.perf_counter()
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maskloop-bench-auth-")))
        url = stack.enter_context(pg_database(f"maskloop_bench_auth_{os.getpid()}"))
        known_emails = _create_accounts(url, ATTEMPTS + 1)
        base, _log_path = stack.enter_context(uvicorn_server(url, workdir))
        _log(f"{len(known_emails)} accounts and the server ready in {time.perf_counter() - t0:.1f} s at {base}")
        # Warm-up: the first unknown attempt makes the server's dummy hash.
        _attempt(base, "127.0.2.1", "warmup-unknown@bench.example")
        _attempt(base, "127.0.2.2", known_emails[-1])
        known: list[float] = []
        unknown: list[float] = []
        for i in range(ATTEMPTS):
            known.append(_attempt(base, f"127.0.1.{2 * i + 1}", known_emails[i]))
            unknown.append(_attempt(base, f"127.0.1.{2 * i + 2}", f"nobody{i}@bench.example"))
    known_ms, unknown_ms = statistics.median(known) * 1000, statistics.median(unknown) * 1000
    ratio = unknown_ms / known_ms
    _log(f"known p50 {known_ms:.1f} ms, unknown p50 {unknown_ms:.1f} ms, ratio {ratio:.3f}")
    return [
        Row("login_known_p50_ms", "sign-in, known e-mail, wrong password (p50)", round(known_ms, 1), "ms"),
        Row("login_unknown_p50_ms", "sign-in, unknown e-mail (p50)", round(unknown_ms, 1), "ms"),
        Row(
            "login_unknown_known_time_ratio",
            "sign-in time, unknown / known e-mail (p50 of 50 each)",
            round(ratio, 3),
            "ratio",
            "0.8–1.25",
            0.8 <= ratio <= 1.25,
        ),
    ]
