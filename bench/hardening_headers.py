"""Browser hardening benchmark (issue 11 item 7): does a live `GET /` carry the security headers?

A real `uvicorn backend.main:app` process on a free loopback port serves the built workspace (frontend/dist,
or a one-file stand-in when it is not built) from a throw-away data folder. `security_headers_ok` is 1 when
the HTML answer carries a Content-Security-Policy whose script-src allows neither inline script nor eval and
whose frame-ancestors is 'none', `X-Content-Type-Options: nosniff` and a Referrer-Policy; else 0.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import Row

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "frontend" / "dist"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def headers_ok(headers: httpx.Headers) -> bool:
    """Whether one answer's headers meet the goal (CSP without inline script, no framing, nosniff, referrer)."""
    directives = {
        words[0]: words[1:]
        for words in (part.split() for part in headers.get("content-security-policy", "").split(";"))
        if words
    }
    script = directives.get("script-src", directives.get("default-src"))
    return bool(
        script
        and "'unsafe-inline'" not in script
        and "'unsafe-eval'" not in script
        and directives.get("frame-ancestors") == ["'none'"]
        and headers.get("x-content-type-options") == "nosniff"
        and headers.get("referrer-policy")
    )


def run() -> list[Row]:
    """Start the API, fetch `/`, check its headers."""
    with tempfile.TemporaryDirectory(prefix="maskloop-bench-headers-") as tmp:
        dist = DIST
        if not (dist / "index.html").exists():
            dist = Path(tmp) / "dist"
            dist.mkdir()
            (dist / "index.html").write_text("<!doctype html><title>maskloop</title>")
        env = {**os.environ, "MASKLOOP_DATA_DIR": str(Path(tmp) / "data"), "MASKLOOP_FRONTEND_DIST": str(dist)}
        env.pop("MASKLOOP_DATABASE_URL", None)
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "backend.main:app", "--port", str(port), "--log-level", "warning"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(600):
                try:
                    response = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                    break
                except httpx.TransportError:
                    if proc.poll() is not None:
                        raise RuntimeError("uvicorn exited before answering") from None
                    time.sleep(0.1)
            else:
                raise RuntimeError("uvicorn did not answer within 60 s")
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    ok = response.status_code == 200 and headers_ok(response.headers)
    return [
        Row(
            "security_headers_ok",
            "live GET / carries CSP (no inline script), frame-ancestors, nosniff, Referrer-Policy",
            1.0 if ok else 0.0,
            "",
            "= 1",
            ok,
        )
    ]
