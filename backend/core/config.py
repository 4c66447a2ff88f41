"""Settings, read in one place from the environment (prefix MASKLOOP_) or a .env file."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every tunable of the platform; the embedded default needs none of them set."""

    model_config = SettingsConfigDict(env_prefix="MASKLOOP_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="Root of the embedded deployment's files.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite under data_dir.")
    blob_root: Path | None = Field(default=None, description="Local blob folder; empty means data_dir/blobs.")
    blob_backend: str = Field(default="local", description="'local' or 's3'.")
    s3_bucket: str = ""
    s3_endpoint_url: str = ""
    s3_prefix: str = "blobs/"
    broker_url: str = Field(default="", description="Celery broker; empty means an SQLite broker in data_dir.")
    broker_visibility_timeout_s: int = Field(
        default=3600, description="Seconds before an unacknowledged task (its worker died) is delivered again."
    )
    job_stale_after_s: int = Field(
        default=120, description="A running job whose heartbeat is older than this may be claimed again."
    )
    job_max_attempts: int = Field(default=3, description="Claims of one job before it is marked failed.")
    task_time_limit_s: int = Field(default=6 * 3600, description="Hard time limit of one task.")
    embedded_worker: bool = Field(default=True, description="`maskloop serve` starts a solo worker with SQLite.")
    torch_threads: int = Field(default=0, description="CPU threads for inference; 0 lets torch decide.")
    secret_key: str = Field(default="", description="Signs bearer tokens; empty means a random key kept in data_dir.")
    token_ttl_minutes: int = 12 * 60
    max_upload_mb: int = Field(default=2048, description="Largest accepted upload, in MiB.")
    max_patch_voxels: int = Field(default=64_000_000, description="Largest patch box accepted, in voxels.")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    frontend_dist: Path = Path("frontend/dist")

    @property
    def resolved_database_url(self) -> str:
        """Database URL with the embedded SQLite default filled in."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'maskloop.db').resolve()}"

    @property
    def resolved_blob_root(self) -> Path:
        """Blob folder with the embedded default filled in."""
        return (self.blob_root or self.data_dir / "blobs").resolve()

    @property
    def resolved_broker_url(self) -> str:
        """Celery broker URL with the embedded SQLite broker filled in."""
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def resolved_secret_key(self) -> str:
        """The signing key: the configured one, or a random one created once under data_dir."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / ".secret_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()

    @property
    def max_upload_bytes(self) -> int:
        """Upload limit in bytes."""
        return self.max_upload_mb * 1024 * 1024


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings object."""
    return Settings()
