"""Click round trips: the API publishes a message on the `interactive` queue and waits for the worker's reply.

The request travels as a Celery message (any broker). The reply comes back by one of two channels:

* Redis (a Redis broker): the worker RPUSHes the reply on a key named by the request id (with a TTL) and the API
  blocks on BLPOP for it: no polling, about a millisecond on top of the work.
* a file (the embedded default: SQLite broker, one machine): the worker writes ``<request id>.json`` atomically
  in ``data_dir/interactive-replies`` and the API looks for it every ``interactive_poll_s``.

A reply nobody waits for any more (the API answered 504) expires: the Redis key after ``REPLY_TTL_S``, a file at
the next sweep. The message itself expires too: a worker drops a request whose caller has given up unrun.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import redis
from kombu.exceptions import OperationalError as BrokerError

from backend.core import queue
from backend.core.config import Settings
from backend.core.errors import GatewayTimeout, ServiceUnavailable

REPLY_TTL_S = 120
SOCKET_TIMEOUT_S = 310.0  # above the largest interactive_timeout_s (300)
REPLY_PREFIX = "maskloop:interactive:reply:"
_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


class Replies(Protocol):
    """Where a worker's reply to one request goes, and how the API waits for it."""

    def send(self, request_id: str, reply: dict[str, Any]) -> None:
        """Deliver the reply to a request (the worker side)."""
        ...

    def wait(self, request_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The reply to a request, or None when none came within `timeout_s` (the API side)."""
        ...


def check_request_id(request_id: str) -> str:
    """A request id as the API makes them (32 hex digits); anything else is refused before it names a key or file."""
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise ValueError(f"invalid interactive request id {request_id!r}")
    return request_id


class RedisReplies:
    """Replies on Redis lists: RPUSH + EXPIRE by the worker, BLPOP by the API."""

    def __init__(self, url: str) -> None:
        # BLPOP blocks up to the click timeout (at most 300 s): the socket must wait longer than that (redis-py's
        # default of 5 s would cut a slow click short), yet not forever should Redis vanish without a reset.
        self.client = redis.Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=SOCKET_TIMEOUT_S, health_check_interval=30
        )

    def send(self, request_id: str, reply: dict[str, Any]) -> None:
        """Push the reply and let it expire if nobody takes it."""
        key = REPLY_PREFIX + check_request_id(request_id)
        with self.client.pipeline() as pipe:
            pipe.rpush(key, json.dumps(reply))
            pipe.expire(key, REPLY_TTL_S)
            pipe.execute()

    def wait(self, request_id: str, timeout_s: float) -> dict[str, Any] | None:
        """Block until the reply arrives or `timeout_s` passes."""
        key = REPLY_PREFIX + check_request_id(request_id)
        try:
            item = self.client.blpop([key], timeout=max(0.01, timeout_s))
        except redis.RedisError as exc:
            raise ServiceUnavailable(f"Redis is unreachable while waiting for the interactive worker: {exc}") from exc
        if item is None:
            return None
        return dict(json.loads(item[1]))


class FileReplies:
    """Replies as files in one folder that the API and the worker share (one machine)."""

    def __init__(self, folder: Path, poll_s: float) -> None:
        self.folder = folder
        self.poll_s = poll_s
        self._last_sweep = 0.0
        self._lock = threading.Lock()

    def _path(self, request_id: str) -> Path:
        return self.folder / f"{check_request_id(request_id)}.json"

    def send(self, request_id: str, reply: dict[str, Any]) -> None:
        """Write the reply atomically (a temporary file renamed into place), sweeping stale replies now and then."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(request_id)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(reply), encoding="utf-8")
        os.replace(tmp, path)
        self._sweep()

    def wait(self, request_id: str, timeout_s: float) -> dict[str, Any] | None:
        """Look for the reply every `poll_s` until it is there (then remove it) or `timeout_s` passes."""
        path = self._path(request_id)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                data = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(self.poll_s)
                continue
            path.unlink(missing_ok=True)
            return dict(json.loads(data))

    def _sweep(self) -> None:
        """Remove replies (and temporary files) older than REPLY_TTL_S, at most once a minute."""
        now = time.time()
        with self._lock:
            if now - self._last_sweep < 60:
                return
            self._last_sweep = now
        for entry in self.folder.iterdir():
            try:
                if now - entry.stat().st_mtime > REPLY_TTL_S:
                    entry.unlink(missing_ok=True)
            except OSError:
                continue


def reply_kind(settings: Settings) -> str:
    """'redis' or 'file': the configured channel, or (auto) Redis exactly when the broker is Redis."""
    if settings.interactive_replies != "auto":
        return settings.interactive_replies
    return "redis" if settings.resolved_broker_url.startswith(("redis://", "rediss://")) else "file"


@lru_cache(maxsize=8)
def _replies(kind: str, where: str, poll_s: float) -> Replies:
    if kind == "redis":
        return RedisReplies(where)
    return FileReplies(Path(where), poll_s)


def replies_for(settings: Settings) -> Replies:
    """The reply channel of these settings (one per process and configuration, so connections are pooled)."""
    kind = reply_kind(settings)
    if kind == "redis":
        url = settings.resolved_broker_url
        if not url.startswith(("redis://", "rediss://")):
            raise ValueError("MASKLOOP_INTERACTIVE_REPLIES=redis needs a Redis broker (MASKLOOP_BROKER_URL=redis://…)")
        return _replies("redis", url, 0.0)
    folder = (settings.data_dir / "interactive-replies").resolve()
    return _replies("file", str(folder), settings.interactive_poll_s)


def round_trip(message: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Publish a click message and wait for its reply: 504 after `interactive_timeout_s`, 503 without a broker."""
    channel = replies_for(settings)
    timeout_s = settings.interactive_timeout_s
    try:
        queue.send_interactive(message, expires_s=timeout_s)
    except (BrokerError, OSError) as exc:
        raise ServiceUnavailable(f"the task queue is unreachable; the click was not sent ({exc})") from exc
    reply = channel.wait(message["request_id"], timeout_s)
    if reply is None:
        raise GatewayTimeout(
            f"the interactive worker did not answer within {timeout_s:g} s; is a worker consuming the "
            "'interactive' queue (`maskloop worker --queues interactive`)? Nothing was changed.",
            timeout_s=timeout_s,
        )
    return reply
