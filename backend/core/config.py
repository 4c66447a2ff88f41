"""Settings, read in one place from the environment (prefix MASKLOOP_) or a .env file."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every tunable of the platform; the embedded default needs none of them set."""

    model_config = SettingsConfigDict(env_prefix="MASKLOOP_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="Root of the embedded deployment's files.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite under data_dir.")
    blob_root: Path | None = Field(default=None, description="Local blob folder; empty means data_dir/blobs.")
    blob_backend: Literal["local", "s3"] = Field(
        default="local", description="'local' (a folder, one host) or 's3' (an S3-compatible bucket: AWS, MinIO, Ceph)"
    )
    s3_bucket: str = Field(default="", description="S3 bucket of the blobs (it must exist); needed for 's3'.")
    s3_endpoint_url: str = Field(default="", description="S3 API endpoint (MinIO, Ceph RGW); empty means AWS S3.")
    s3_prefix: str = Field(default="blobs/", description="Key prefix: a blob is stored at <prefix><sha256>.")
    s3_region: str = Field(default="", description="S3 region; empty: AWS_DEFAULT_REGION / AWS_REGION, else us-east-1.")
    s3_access_key_id: str = Field(default="", description="S3 access key; empty: the standard AWS credential chain.")
    s3_secret_access_key: SecretStr = Field(
        default=SecretStr(""), description="S3 secret key; empty: the standard AWS credential chain."
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto", description="'path' for MinIO/Ceph endpoints without wildcard DNS; 'auto' lets boto3 pick."
    )
    s3_multipart_threshold_mb: int = Field(
        default=64, ge=5, description="Blobs at least this large (MiB) are uploaded in parts (multipart upload)."
    )
    s3_multipart_chunk_mb: int = Field(default=16, ge=5, description="Size of one part of a multipart upload (MiB).")
    s3_conditional_put: bool = Field(
        default=True,
        description="Write with If-None-Match: * so a stored blob is never overwritten; turn off for servers "
        "without conditional writes (then: exists-check before each write, as the local store does).",
    )
    s3_presign_get: bool = Field(
        default=False,
        description="The volume GET answers 307 to a presigned S3 URL instead of proxying the bytes (the bucket "
        "needs CORS for the web origin; browser caching by ETag is lost).",
    )
    s3_presign_ttl_s: int = Field(default=300, ge=1, le=7 * 24 * 3600, description="Lifetime of a presigned GET.")
    s3_presign_endpoint_url: str = Field(
        default="", description="Endpoint the browser reaches S3 at, for presigned URLs; empty: s3_endpoint_url."
    )
    s3_max_connections: int = Field(default=32, ge=1, description="HTTP connections to S3 one process keeps.")
    s3_max_attempts: int = Field(default=3, ge=1, description="Tries of one S3 request (standard retry mode).")
    s3_connect_timeout_s: float = Field(default=5.0, gt=0, description="Seconds to open a connection to S3.")
    s3_read_timeout_s: float = Field(default=60.0, gt=0, description="Seconds to wait for S3 to answer or send.")
    s3_cache_dir: Path | None = Field(
        default=None, description="Local disk cache of blobs read from or written to S3; empty: data_dir/s3-cache."
    )
    s3_cache_max_mb: int = Field(
        default=4096, ge=0, description="Size of the local S3 blob cache in MiB (blobs are immutable); 0: no cache."
    )
    broker_url: str = Field(default="", description="Celery broker; empty means an SQLite broker in data_dir.")
    broker_visibility_timeout_s: int = Field(
        default=3600,
        description="Redis: seconds before an unacknowledged task is delivered again; must exceed job_stale_after_s.",
    )
    job_stale_after_s: int = Field(
        default=30,
        description="A running job whose heartbeat is older than this is re-sent or failed by the reaper.",
    )
    job_max_attempts: int = Field(default=3, description="Claims of one job before it is marked failed.")
    task_time_limit_s: int = Field(default=6 * 3600, description="Hard time limit of one task.")
    embedded_worker: bool = Field(default=True, description="`maskloop serve` starts a solo worker with SQLite.")
    torch_threads: int = Field(default=0, description="CPU threads for inference; 0 lets torch decide.")
    secret_key: str = Field(default="", description="Signs bearer tokens; empty means a random key kept in data_dir.")
    token_ttl_minutes: int = 12 * 60
    max_upload_mb: int = Field(default=2048, description="Largest accepted upload, in MiB.")
    monailabel_infer_timeout_s: float = Field(
        default=60.0, gt=0, description="How long a MONAI Label infer request waits for its job before a 504."
    )
    max_patch_voxels: int = Field(default=64_000_000, description="Largest patch box accepted, in voxels.")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    frontend_dist: Path = Path("frontend/dist")

    # --- jobs: recovery of killed workers ---
    job_heartbeat_s: float | None = Field(
        default=None,
        description="Seconds between a running job's heartbeats (a side thread); empty: job_stale_after_s / 6.",
    )
    job_reaper_interval_s: float | None = Field(
        default=None,
        description="Seconds between passes of each worker's reaper (≤ 30, < job_stale_after_s); "
        "empty: job_stale_after_s / 3, at most 10.",
    )

    # --- decoding: bounded decompression of uploads ---
    decode_slots: int = Field(
        default=2,
        description="Heavy decodes (NIfTI volumes and masks, DICOM series) one API process runs at once; 0: no cap.",
    )
    decode_wait_s: float = Field(
        default=20.0, description="Seconds a decode waits for a free slot before the API answers 503 + Retry-After."
    )
    max_scan_voxels: int = Field(
        default=1 << 30,
        description="Largest scan accepted by an import, in voxels (512x512x4096); checked from the header.",
    )
    max_decoded_mb: int = Field(
        default=3072,
        description="Largest decoded voxel data of one uploaded NIfTI file or DICOM series, in MiB.",
    )
    label_map_cache_mb: int = Field(
        default=256,
        ge=0,
        description="Combined label maps of recent versions one API process keeps in memory, MiB (a 512x512x300 "
        "map is 75 MiB): a MONAI Label client's next save on the version it was given is compared with that "
        "version's map without recomposing every mask; 0: none.",
    )

    @model_validator(mode="after")
    def _check_job_recovery(self) -> Settings:
        """Refuse job-recovery settings under which a killed worker's job could hang or run twice at once."""
        problems = job_recovery_problems(self)
        if problems:
            raise ValueError("job recovery settings refused: " + "; ".join(problems))
        return self

    @property
    def resolved_job_heartbeat_s(self) -> float:
        """Heartbeat period with the default (a sixth of the stale threshold) filled in."""
        return self.job_heartbeat_s if self.job_heartbeat_s is not None else self.job_stale_after_s / 6

    @property
    def resolved_job_reaper_interval_s(self) -> float:
        """Reaper period with the default (a third of the stale threshold, at most 10 s) filled in."""
        if self.job_reaper_interval_s is not None:
            return self.job_reaper_interval_s
        return min(10.0, self.job_stale_after_s / 3)

    # --- request bodies ---
    max_json_body_kb: int = Field(
        default=1024,
        ge=1,
        description="Largest body, in KiB, of a route that takes no file (JSON bodies, login); refused with 413 "
        "while streaming. File routes take max_upload_mb, the draft autosave its own 64 MiB.",
    )

    # --- housekeeping: temp files and blob garbage collection ---
    temp_max_age_hours: float = Field(
        default=6.0,
        gt=0,
        description="Temp files of interrupted writes and uploads (blob folder tmp/, maskloop-* in the system temp "
        "folder) untouched this long are removed at API and worker start and periodically.",
    )
    housekeeping_interval_s: int = Field(
        default=3600, ge=0, description="Seconds between the API's periodic temp-file sweeps; 0: only at start."
    )
    gc_grace_hours: float = Field(
        default=24.0,
        ge=0,
        description="`maskloop gc` keeps an unreferenced blob written (or reused) less than this long ago, so an "
        "upload whose row is not committed yet survives.",
    )

    # --- auth: login throttling, token lifetimes, login sessions ---
    login_max_failures_per_account: int = Field(
        default=5, ge=0, description="Failed sign-ins of one e-mail (known or not) before it is locked; 0: off."
    )
    login_max_failures_per_address: int = Field(
        default=30, ge=0, description="Failed sign-ins from one client address before it is locked; 0: off."
    )
    login_failure_window_s: int = Field(
        default=3600,
        ge=1,
        description="Seconds without a failed sign-in after which an account's or address's count restarts.",
    )
    login_lockout_base_s: float = Field(
        default=2.0, gt=0, description="First lockout in seconds; it doubles with every further failure."
    )
    login_lockout_max_s: float = Field(default=900.0, gt=0, description="Longest single lockout in seconds.")
    login_max_concurrent_hashes: int = Field(
        default=4, ge=1, description="Password hashes (argon2, 64 MiB each) one API process computes at once."
    )
    login_hash_wait_s: float = Field(
        default=3.0, ge=0, description="Seconds a sign-in waits for a hashing slot before it answers 503."
    )
    personal_token_max_days: int = Field(
        default=30, ge=1, description="Longest (and default) lifetime of a person's API token, in days."
    )
    service_token_max_days: int = Field(
        default=365, ge=1, description="Longest (and default) lifetime of a service account's API token, in days."
    )
    session_max_hours: float = Field(
        default=168.0, gt=0, description="Absolute lifetime of a login session: no refresh extends it past this."
    )

    # --- predictors: architectures beyond the bundled unet, segresnet and classical ---
    predictor_modules: str = Field(
        default="",
        description="Comma-separated Python modules the worker imports at start; each registers its predictors "
        "(worker.models.predictors.register), so a new architecture is one module named here.",
    )
    extra_architectures: dict[str, dict[str, bool]] = Field(
        default_factory=dict,
        description='Architectures the API accepts beyond its catalogue, as JSON {"name": {"trainable": false, '
        '"needs_weights": true}}: the API process never imports predictor modules, so it learns their names here.',
    )

    # --- observability: Prometheus metrics, structured logs, readiness (backend/observability) ---
    metrics_enabled: bool = Field(
        default=True, description="Count requests and jobs and serve them at GET /metrics (Prometheus text format)."
    )
    metrics_token: SecretStr = Field(
        default=SecretStr(""),
        description="When set, GET /metrics (and the workers' exporter) needs `Authorization: Bearer <token>`.",
    )
    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        description="Folder where every process of one host (uvicorn workers, Celery prefork children) writes its "
        "metrics (prometheus_client multiprocess mode); empty: each process counts alone. Give each start a fresh "
        "folder (a tmpfs): files of an earlier run are summed in.",
    )
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of a Celery worker's own /metrics exporter; 0: none."
    )
    worker_metrics_addr: str = Field(default="127.0.0.1", description="Address the workers' exporter listens on.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="'json': one JSON object per log line with the request id (HTTP) or job id (workers).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Level of the root logger when log_format is json."
    )
    readiness_timeout_s: float = Field(
        default=3.0, gt=0, le=60, description="Seconds each check of GET /api/health/ready may take."
    )

    # --- dataset imports as jobs (backend/imports) ---
    import_root: Path | None = Field(
        default=None,
        description="Server-side folder under which POST /api/projects/{id}/imports accepts dataset folders "
        "(relative paths are taken from it; symlinks are resolved first); empty: the API refuses dataset imports "
        "(the CLI imports any folder). Workers must see the folders at the same path.",
    )
    import_mask_threads: int = Field(
        default=0,
        ge=0,
        description="Threads that decode and chunk one case's masks at once in a dataset import; 0: as many as "
        "the CPUs the process may run on.",
    )

    # --- interactive AI: click-guided refinement served by a warm worker of the `interactive` queue ---
    interactive_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="How long a click request waits for the interactive worker (then 504)."
    )
    interactive_max_clicks: int = Field(
        default=64,
        ge=1,
        le=1000,
        description="Most clicks (positive + negative) in one request; a model may allow fewer.",
    )
    interactive_max_body_kb: int = Field(
        default=16384, ge=64, description="Largest body of a click request (its `previous` mask box, base64), KiB."
    )
    interactive_volume_cache_mb: int = Field(
        default=2048, ge=0, description="Decoded scan volumes an interactive worker keeps (LRU by image digest), MiB."
    )
    interactive_model_cache: int = Field(
        default=2, ge=1, description="Interactive model versions one worker process keeps loaded and warm (LRU)."
    )
    interactive_replies: Literal["auto", "redis", "file"] = Field(
        default="auto",
        description="How a worker's answer reaches the API: 'redis' (a reply list, BLPOP; needs a Redis broker), "
        "'file' (data_dir/interactive-replies, one machine: the embedded default); 'auto' picks by the broker URL.",
    )
    interactive_poll_s: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="File replies: seconds between the API's looks for a reply; also the SQLite-broker poll period "
        "of the interactive worker `maskloop serve` starts.",
    )
    interactive_worker: bool = Field(
        default=True, description="`maskloop serve` with its embedded worker also starts a warm `interactive` worker."
    )
    broker_poll_s: float | None = Field(
        default=None, gt=0, description="SQLite broker: seconds between an idle worker's polls; empty: kombu's 1 s."
    )

    # --- PACS over DICOMweb (backend/pacs): QIDO-RS search, WADO-RS retrieval, STOW-RS of a SEG ---
    pacs_allowed_hosts: str = Field(
        default="",
        description="Comma-separated PACS hosts a project's DICOMweb source may name: 'host' (any port) or "
        "'host:port' ('[::1]:8042' for IPv6). Set by the platform's administrator; a source on another host is "
        "refused with 403 when it is configured and whenever it is used. Empty: no PACS may be configured.",
    )
    pacs_credentials_key: SecretStr = Field(
        default=SecretStr(""),
        description="Fernet key (urlsafe base64 of 32 bytes) that encrypts PACS passwords at rest; empty: derived "
        "from secret_key. Changing it makes stored passwords unreadable (configure the sources again).",
    )
    pacs_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Seconds one DICOMweb request may take to connect or to answer."
    )
    pacs_search_limit: int = Field(
        default=100, ge=1, le=1000, description="Most studies (or series) one QIDO-RS search returns."
    )

    # --- model registry: uploaded weights are checked by a worker (a `check_weights` job on the cpu queue) ---
    weights_check_wait_s: float = Field(
        default=20.0,
        ge=0,
        le=600,
        description="How long a weights upload waits for its check (load into the network, one forward pass) "
        "before answering 201 with weights_status 'pending' (0: never wait).",
    )
    weights_check_claim_wait_s: float = Field(
        default=5.0,
        ge=0,
        le=600,
        description="An upload stops waiting early when no worker has taken its check within this many seconds "
        "(every worker busy, or none running): the check runs when one is free.",
    )

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
    def presign_connect_sources(self) -> list[str]:
        """Origins the browser fetches presigned volume URLs from (for the CSP connect-src); none when off."""
        if self.blob_backend != "s3" or not self.s3_presign_get:
            return []
        endpoint = self.s3_presign_endpoint_url or self.s3_endpoint_url
        if not endpoint:
            return ["https://*.amazonaws.com"]
        parts = urlsplit(endpoint)
        return [f"{parts.scheme}://{parts.netloc}"]

    @property
    def resolved_s3_cache_dir(self) -> Path:
        """The local S3 blob cache folder with the default (data_dir/s3-cache) filled in."""
        return (self.s3_cache_dir or self.data_dir / "s3-cache").resolve()

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


def job_recovery_problems(settings: Settings) -> list[str]:
    """What is wrong with the job-recovery settings (empty when they are consistent)."""
    stale = settings.job_stale_after_s
    problems: list[str] = []
    if stale < 2:
        problems.append(f"MASKLOOP_JOB_STALE_AFTER_S={stale} must be at least 2 seconds")
    heartbeat, reaper = settings.resolved_job_heartbeat_s, settings.resolved_job_reaper_interval_s
    if not 0 < heartbeat <= stale / 2:
        # Two heartbeats per stale window at least, so one slow database write never makes a live job look dead.
        problems.append(f"MASKLOOP_JOB_HEARTBEAT_S={heartbeat:g} must be > 0 and at most half of the stale threshold")
    if not 0 < reaper <= 30 or reaper >= stale:
        problems.append(
            f"MASKLOOP_JOB_REAPER_INTERVAL_S={reaper:g} must be > 0, at most 30 and below "
            f"MASKLOOP_JOB_STALE_AFTER_S={stale}"
        )
    if settings.broker_visibility_timeout_s <= stale:
        # A redelivered or deferred message must not come back before a live job's heartbeat can go stale.
        problems.append(
            f"MASKLOOP_BROKER_VISIBILITY_TIMEOUT_S={settings.broker_visibility_timeout_s} must exceed "
            f"MASKLOOP_JOB_STALE_AFTER_S={stale}"
        )
    if settings.job_max_attempts < 1:
        problems.append(f"MASKLOOP_JOB_MAX_ATTEMPTS={settings.job_max_attempts} must be at least 1")
    return problems


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings object."""
    return Settings()
