"""S3-compatible blob store (AWS S3, MinIO, Ceph RGW): content-addressed keys, never overwritten, ranged reads.

Keys are `<prefix><sha256>`. Writes are conditional (`If-None-Match: *` on PutObject and on
CompleteMultipartUpload, added to every write of this store's client), so a stored blob is never replaced: a
second writer of the same digest gets 412, which means "already stored". Servers without conditional writes
(`MASKLOOP_S3_CONDITIONAL_PUT=false`) get an exists-check before each write instead; two racing writers may then
both upload, but of identical bytes under a content-addressed key, which is what the local store's rename does too.

A writer that finds its blob already stored refreshes an old blob's LastModified (a copy onto itself, at most
hourly) so a concurrent `maskloop gc`, whose grace period counts from LastModified, does not sweep it: the same
rule as the local store's mtime touch. Do not enable bucket versioning (or expire noncurrent versions).

Blobs at least `s3_multipart_threshold_mb` large go up as multipart uploads (boto3's transfer manager); a killed
upload leaves parts that `remove_stale_temp` (run by `maskloop gc`) aborts, as does a bucket lifecycle rule
`AbortIncompleteMultipartUpload`. An unreachable or refusing server raises ServiceUnavailable (HTTP 503): blobs
are written before the rows that name them, so a failed write leaves no row behind.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from backend.core.blobcache import BlobCache, CacheWriter
from backend.core.blobstore import _DIGEST_RE, _READ_CHUNK, _TOUCH_AFTER_S, BlobInfo, check_digest, sha256_hex
from backend.core.config import Settings
from backend.core.errors import NotFound, ServiceUnavailable

log = logging.getLogger(__name__)

_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_EXISTS_CODES = frozenset({"PreconditionFailed", "412"})
# AWS answers 409 when another conditional write of the same key is in flight: retried after a short wait.
_RACE_CODES = frozenset({"ConditionalRequestConflict", "409"})
_MiB = 1 << 20


@dataclass(frozen=True)
class S3Options:
    """Where the bucket is and how to talk to it (built from settings by S3BlobStore.from_settings)."""

    bucket: str
    prefix: str = "blobs/"
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    addressing_style: str = "auto"
    multipart_threshold: int = 64 * _MiB
    multipart_chunksize: int = 16 * _MiB
    conditional_put: bool = True
    presign_ttl_s: int | None = None  # None: no presigned URLs
    presign_endpoint_url: str | None = None
    max_connections: int = 32
    max_attempts: int = 3
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    cache_dir: Path | None = None  # None: no local read cache
    cache_max_bytes: int = 0


def _code(exc: ClientError) -> str:
    """The S3 error code of a refused request ('NoSuchKey', 'PreconditionFailed', '404', ...)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def _add_if_none_match(params: dict[str, Any], **_: Any) -> None:
    """botocore hook: make a PutObject / CompleteMultipartUpload conditional on the key being absent."""
    params.setdefault("IfNoneMatch", "*")


class S3BlobStore:
    """Blobs as objects `<prefix><sha256>` in one bucket of an S3-compatible server."""

    def __init__(self, options: S3Options) -> None:
        if not options.bucket:
            raise ValueError("MASKLOOP_S3_BUCKET must be set when MASKLOOP_BLOB_BACKEND=s3")
        self.options = options
        self.bucket = options.bucket
        self.prefix = options.prefix
        session = boto3.session.Session(
            aws_access_key_id=options.access_key_id or None,
            aws_secret_access_key=options.secret_access_key or None,
            region_name=options.region or None,
        )
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": options.addressing_style},
            max_pool_connections=options.max_connections,
            connect_timeout=options.connect_timeout_s,
            read_timeout=options.read_timeout_s,
            retries={"max_attempts": options.max_attempts, "mode": "standard"},
        )
        region = session.region_name or "us-east-1"
        self.client = session.client("s3", endpoint_url=options.endpoint_url or None, region_name=region, config=config)
        if options.conditional_put:
            for operation in ("PutObject", "CompleteMultipartUpload"):
                self.client.meta.events.register(f"before-parameter-build.s3.{operation}", _add_if_none_match)
        self._presigner = None
        if options.presign_ttl_s is not None:
            endpoint = options.presign_endpoint_url or options.endpoint_url or None
            self._presigner = session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
        self._transfer = TransferConfig(
            multipart_threshold=options.multipart_threshold,
            multipart_chunksize=options.multipart_chunksize,
            max_concurrency=4,
        )
        self._where = f"s3 bucket {self.bucket!r}" + (f" at {options.endpoint_url}" if options.endpoint_url else "")
        self.cache: BlobCache | None = None
        if options.cache_dir is not None and options.cache_max_bytes > 0:
            self.cache = BlobCache(options.cache_dir, options.cache_max_bytes)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        """The store the settings describe (MASKLOOP_S3_*; credentials may come from the AWS environment)."""
        return cls(
            S3Options(
                bucket=settings.s3_bucket,
                prefix=settings.s3_prefix,
                endpoint_url=settings.s3_endpoint_url or None,
                region=settings.s3_region or None,
                access_key_id=settings.s3_access_key_id or None,
                secret_access_key=settings.s3_secret_access_key.get_secret_value() or None,
                addressing_style=settings.s3_addressing_style,
                multipart_threshold=settings.s3_multipart_threshold_mb * _MiB,
                multipart_chunksize=settings.s3_multipart_chunk_mb * _MiB,
                conditional_put=settings.s3_conditional_put,
                presign_ttl_s=settings.s3_presign_ttl_s if settings.s3_presign_get else None,
                presign_endpoint_url=settings.s3_presign_endpoint_url or None,
                max_connections=settings.s3_max_connections,
                max_attempts=settings.s3_max_attempts,
                connect_timeout_s=settings.s3_connect_timeout_s,
                read_timeout_s=settings.s3_read_timeout_s,
                cache_dir=settings.resolved_s3_cache_dir,
                cache_max_bytes=settings.s3_cache_max_mb * _MiB,
            )
        )

    def uncached(self) -> S3BlobStore:
        """The same bucket without the local read cache (fsck must see what the bucket holds)."""
        view = copy.copy(self)
        view.cache = None
        return view

    # ------------------------------------------------------------------------------------------ helpers

    def key(self, digest: str) -> str:
        """The object key of a blob."""
        return self.prefix + check_digest(digest)

    def _fail(self, what: str, exc: Exception) -> ServiceUnavailable:
        """The 503 for a refused or failed S3 request."""
        if isinstance(exc, ClientError):
            return ServiceUnavailable(
                f"the blob store refused to {what}: {_code(exc) or exc} ({self._where})", retry_after=5
            )
        return ServiceUnavailable(f"the blob store is unreachable ({self._where}): {exc}", retry_after=5)

    @contextmanager
    def _errors(self, what: str, digest: str | None = None) -> Iterator[None]:
        """Turn boto errors into domain errors: a missing object is NotFound, anything else 503."""
        try:
            yield
        except ClientError as exc:
            if digest is not None and _code(exc) in _MISSING_CODES:
                raise NotFound(f"blob {digest} is missing from the store") from exc
            raise self._fail(what, exc) from exc
        except BotoCoreError as exc:
            raise self._fail(what, exc) from exc

    def _head(self, digest: str) -> dict[str, Any] | None:
        """The object's metadata, or None when it is not stored."""
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self.key(digest)))
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                return None
            raise self._fail("read a blob's metadata", exc) from exc
        except BotoCoreError as exc:
            raise self._fail("read a blob's metadata", exc) from exc

    def _touch_if_old(self, digest: str, head: dict[str, Any]) -> None:
        """Refresh an old blob's LastModified (a copy onto itself) when a writer reuses it, so gc keeps it."""
        if time.time() - head["LastModified"].timestamp() <= _TOUCH_AFTER_S:
            return
        key = self.key(digest)
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE",
                Metadata={"maskloop-reused": str(int(time.time()))},
            )
        except (ClientError, BotoCoreError) as exc:  # e.g. over 5 GiB: the grace period still protects young rows
            log.warning("could not refresh the age of blob %s: %s", digest, exc)

    def _write(self, digest: str, upload: Callable[[], object]) -> None:
        """Run one upload of digest; a 412 (already stored) counts as success and refreshes the blob's age."""
        for attempt in range(3):
            try:
                upload()
                return
            except ClientError as exc:
                code = _code(exc)
                if code in _EXISTS_CODES:
                    head = self._head(digest)
                    if head is not None:
                        self._touch_if_old(digest, head)
                        return
                    # Stored a moment ago, gone now (gc swept an old unreferenced copy): write it again.
                if (code in _RACE_CODES or code in _EXISTS_CODES) and attempt < 2:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise self._fail(f"store blob {digest}", exc) from exc
            except BotoCoreError as exc:
                raise self._fail(f"store blob {digest}", exc) from exc

    # ------------------------------------------------------------------------------------------ protocol

    def put_bytes(self, data: bytes) -> str:
        """Store bytes under their sha256 (no-op if present) and return the digest."""
        digest = sha256_hex(data)
        large = len(data) >= self.options.multipart_threshold
        # Small blobs go up conditionally at once (one request); large ones are not sent again when stored.
        if (large or not self.options.conditional_put) and self.exists(digest):
            return digest
        key = self.key(digest)
        if large:
            self._write(
                digest,
                lambda: self.client.upload_fileobj(io.BytesIO(data), self.bucket, key, Config=self._transfer),
            )
        else:
            self._write(digest, lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data))
        if self.cache is not None:
            self.cache.put_bytes(digest, data)
        return digest

    def put_file(self, path: Path) -> str:
        """Store a file's content under its sha256 (multipart when large) and return the digest."""
        hasher = hashlib.sha256()
        with path.open("rb") as src:
            while block := src.read(_READ_CHUNK):
                hasher.update(block)
        digest = hasher.hexdigest()
        # Asked first even with conditional writes: a large file already stored is not sent again.
        if self.exists(digest):
            return digest
        key = self.key(digest)

        def upload() -> None:
            with path.open("rb") as src:
                self.client.upload_fileobj(src, self.bucket, key, Config=self._transfer)

        self._write(digest, upload)
        if self.cache is not None:
            self.cache.put_file(digest, path)
        return digest

    def _get(self, digest: str, start: int = 0) -> dict[str, Any]:
        """A GET of the blob from byte start on (the body is a stream)."""
        extra = {"Range": f"bytes={start}-"} if start else {}
        with self._errors(f"read blob {digest}", digest):
            return dict(self.client.get_object(Bucket=self.bucket, Key=self.key(digest), **extra))

    def get_bytes(self, digest: str) -> bytes:
        """Read a whole blob (from the local cache when it holds a copy)."""
        if self.cache is not None and (cached := self.cache.get(digest)) is not None:
            return cached
        answer = self._get(digest)
        with self._errors(f"read blob {digest}", digest):
            data = bytes(answer["Body"].read())
        if self.cache is not None and self.cache.admits(len(data)) and sha256_hex(data) == digest:
            self.cache.put_bytes(digest, data)
        return data

    def open(self, digest: str) -> BinaryIO:
        """Open a blob for streaming reads: the cached copy, else the object (seekable: a seek costs one ranged
        GET at the next read); a miss read front to back fills the cache."""
        if self.cache is not None and (cached := self.cache.open(digest)) is not None:
            return cached
        answer = self._get(digest)
        size = int(answer["ContentLength"])
        tee = self.cache.writer(digest, size) if self.cache is not None and self.cache.admits(size) else None
        raw = _S3Reader(self, digest, answer["Body"], size, tee)
        return io.BufferedReader(raw, buffer_size=_READ_CHUNK)

    def exists(self, digest: str) -> bool:
        """Whether the blob is stored (a writer asking refreshes an old blob's age, as the local store does)."""
        head = self._head(digest)
        if head is None:
            return False
        self._touch_if_old(digest, head)
        return True

    def size(self, digest: str) -> int:
        """Size of a stored blob in bytes."""
        head = self._head(digest)
        if head is None:
            raise NotFound(f"blob {digest} is missing from the store")
        return int(head["ContentLength"])

    def local_path(self, digest: str) -> Path | None:
        """None: an object in a bucket has no filesystem path (callers stream it through open())."""
        check_digest(digest)
        return None

    def iter_blobs(self) -> Iterator[BlobInfo]:
        """Every stored blob under the prefix with its size and LastModified (listed a page at a time)."""
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors("list blobs"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Contents", []):
                    name = str(item["Key"])[len(self.prefix) :]
                    if _DIGEST_RE.match(name):
                        yield BlobInfo(name, int(item["Size"]), item["LastModified"].timestamp())

    def delete(self, digest: str, *, older_than: float | None = None) -> bool:
        """Remove a blob; with older_than, only if its LastModified is still older (a writer may have reused it)."""
        head = self._head(digest)
        if head is None:
            return True
        if older_than is not None and head["LastModified"].timestamp() >= older_than:
            return False
        with self._errors(f"delete blob {digest}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(digest))
        if self.cache is not None:
            self.cache.discard(digest)
        return True

    def remove_stale_temp(self, max_age_s: float) -> tuple[int, int]:
        """Abort multipart uploads under the prefix started more than max_age_s ago (and drop the cache's stale temp
        files); returns (entries, bytes)."""
        cutoff = time.time() - max_age_s
        aborted = freed = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        with self._errors("list unfinished uploads"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() >= cutoff:
                        continue
                    key, upload_id = str(upload["Key"]), str(upload["UploadId"])
                    try:
                        parts = self.client.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id)
                        size = sum(int(p["Size"]) for p in parts.get("Parts", []))
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                    except ClientError as exc:
                        if _code(exc) in ("NoSuchUpload", "404"):
                            continue  # finished or aborted meanwhile
                        raise
                    aborted += 1
                    freed += size
        if self.cache is not None:
            files, size = self.cache.remove_stale_temp(max_age_s)
            aborted, freed = aborted + files, freed + size
        return aborted, freed

    # ------------------------------------------------------------------------------------------ extras

    def presigned_get_url(self, digest: str, *, filename: str, media_type: str) -> str | None:
        """A time-limited GET URL of the blob for the browser, when presigning is on (None otherwise)."""
        if self._presigner is None or self.options.presign_ttl_s is None:
            return None
        params = {
            "Bucket": self.bucket,
            "Key": self.key(digest),
            "ResponseContentType": media_type,
            "ResponseContentDisposition": f'attachment; filename="{filename}"',
        }
        url = self._presigner.generate_presigned_url("get_object", Params=params, ExpiresIn=self.options.presign_ttl_s)
        return str(url)

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist yet (compose's one-shot setup and tests)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise self._fail("read the bucket", exc) from exc
        except BotoCoreError as exc:
            raise self._fail("read the bucket", exc) from exc
        with self._errors("create the bucket"):
            self.client.create_bucket(Bucket=self.bucket)


class _S3Reader(io.RawIOBase):
    """A seekable read-only view of one object: streams one GET, re-opens with a ranged GET after a seek."""

    def __init__(self, store: S3BlobStore, digest: str, body: Any, size: int, tee: CacheWriter | None) -> None:
        super().__init__()
        self._store, self._digest, self._size = store, digest, size
        self._body: Any = body
        self._tee = tee  # fills the cache while the blob is read front to back
        self._pos = 0  # position the caller sees
        self._body_pos = 0  # position the open body will deliver next

    def readable(self) -> bool:
        """Always readable."""
        return True

    def seekable(self) -> bool:
        """Seeking is supported (by ranged GETs)."""
        return True

    def tell(self) -> int:
        """The current position."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position; the next read starts a ranged GET there unless the open stream is already there."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        target = base + offset
        if target < 0:
            raise ValueError("negative seek position")
        self._pos = target
        return target

    def readinto(self, buffer: Any) -> int:
        """Read up to len(buffer) bytes at the current position."""
        view = memoryview(buffer).cast("B")
        if self._pos >= self._size or not len(view):
            return 0
        if self._body is None or self._body_pos != self._pos:
            self._close_body()
            self._body = self._store._get(self._digest, self._pos)["Body"]
            self._body_pos = self._pos
        with self._store._errors(f"read blob {self._digest}", self._digest):
            data = self._body.read(len(view))
        if not data:
            raise ServiceUnavailable(f"blob {self._digest} ended early at byte {self._pos} of {self._size}")
        view[: len(data)] = data
        if self._tee is not None:
            if self._tee.written != self._pos:
                self._tee.abandon()  # not read front to back
                self._tee = None
            else:
                self._tee.write(data)
        self._pos += len(data)
        self._body_pos = self._pos
        if self._tee is not None and self._pos == self._size:
            self._tee.commit()
            self._tee = None
        return len(data)

    def _close_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        """Release the HTTP response (and a cache fill that did not reach the end)."""
        self._close_body()
        if self._tee is not None:
            self._tee.abandon()
            self._tee = None
        super().close()
