"""A real S3 API server for tests: moto's standalone server (`moto_server`, from moto[server]) as a subprocess on
127.0.0.1 and a free port. Tests own it: started once per session, stopped (and restartable) by the fixtures."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from backend.core.blobstore_s3 import S3BlobStore, S3Options

BUCKET = "maskloop-blobs"
# moto accepts any credentials; these only keep boto3 from looking for real ones.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _moto_command(port: int) -> list[str]:
    found = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    base = [found] if found else [sys.executable, "-m", "moto.server"]
    return [*base, "-H", "127.0.0.1", "-p", str(port)]


@dataclass
class S3Server:
    """One moto_server process; `stop()` kills it (the 'S3 server stopped' fault), `start()` brings it back."""

    log_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """http://127.0.0.1:<port>."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> S3Server:
        """Start the server and wait until it answers."""
        log = (self.log_dir / f"moto-{self.port}.log").open("ab")
        env = {**os.environ, **CREDENTIALS}
        self.process = subprocess.Popen(_moto_command(self.port), stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}; see {self.log_dir}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint_url} within {timeout_s:g} s")

    def stop(self) -> None:
        """Kill the server (its data is lost, as a crashed in-memory server's would be)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def store(self, prefix: str | None = None, **options: object) -> S3BlobStore:
        """An S3 blob store on this server's bucket (created if needed) under a fresh key prefix of its own."""
        store = S3BlobStore(
            S3Options(
                bucket=BUCKET,
                prefix=prefix if prefix is not None else f"t-{uuid.uuid4().hex[:12]}/",
                endpoint_url=self.endpoint_url,
                region="us-east-1",
                access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                **options,  # type: ignore[arg-type]
            )
        )
        store.ensure_bucket()
        return store
