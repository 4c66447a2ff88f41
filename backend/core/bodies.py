"""Request bodies: a pure ASGI guard that checks the caller's credential before any body byte is read and
enforces a per-route size limit while the body streams in (Content-Length and chunked alike).

Why a middleware: FastAPI parses JSON and form bodies before a route's dependencies (authentication, roles)
run, and a client may stream a chunked body of any size without announcing it. The guard sits between the
server and the app and decides from the headers alone:

- a route that is not public and a request without a well-formed, validly signed credential: the app gets an
  empty body (the real ``receive`` is never called), so its own authentication answers 401 as usual and not
  one body byte is taken from the connection;
- an announced ``Content-Length`` above the route's limit: 413 at once, nothing read;
- otherwise every ``http.request`` message is counted as it is taken from ``receive()``; once the count passes
  the limit the guard stops reading and answers 413 (so at most limit + one chunk is ever read).

Answers to a body left unread carry ``Connection: close`` so the server hangs up rather than drain the rest.
The per-process counters in ``STATS`` (bytes taken from ``receive()``, withheld bodies, 413s) are what tests
and the benchmark read, with the server running in their own process.

Bearer JWTs are checked for signature and expiry here (cheap, no database); revocation and the user's state are
left to the route's dependency. ``mlk_`` API tokens need a database lookup, which the guard does not do: it only
checks their shape. A forged but well-formed API token therefore reaches the app, where upload routes still read
nothing (they parse their multipart body after their access dependency) and JSON routes read at most the small
JSON limit before their dependency answers 401.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import jwt
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.core.errors import error_body

_API_TOKEN = re.compile(r"mlk_[A-Za-z0-9_-]{16,256}")


@dataclass(frozen=True)
class Limit:
    """A body size limit in bytes and the message of the 413 that enforces it."""

    max_bytes: int
    message: str


@dataclass(frozen=True)
class BodyPolicy:
    """Which routes take which body limit, and which body routes are public (no credential needed)."""

    default: Limit
    routes: tuple[tuple[str, re.Pattern[str], Limit], ...] = ()  # (method, full-match path pattern, limit)
    public: frozenset[tuple[str, str]] = frozenset()  # (method, exact path)
    secret_key: Callable[[], str] = field(default=lambda: "")

    def limit_for(self, method: str, path: str) -> Limit:
        """The limit of a request's route (the default JSON limit unless a route rule matches)."""
        for rule_method, pattern, limit in self.routes:
            if rule_method == method and pattern.fullmatch(path):
                return limit
        return self.default


class BodyStats:
    """Per-process totals of what the guard let through (read by tests and the benchmark)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_received = 0  # body bytes taken from the server's receive()
        self.withheld = 0  # requests with a body that was never read (no valid credential)
        self.refused = 0  # 413 answers

    def add(self, name: str, amount: int = 1) -> None:
        """Add to one counter."""
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict[str, int]:
        """The current totals."""
        with self._lock:
            return {"bytes_received": self.bytes_received, "withheld": self.withheld, "refused": self.refused}


STATS = BodyStats()


class _TooLarge(Exception):
    """Raised into the app from receive() once the body passes its limit; the guard answers 413."""


def has_credential(headers: Headers, secret_key: str) -> bool:
    """Whether the request carries a bearer credential worth reading a body for: a JWT with a valid signature
    that has not expired, or a well-formed ``mlk_`` API token (its database check is the route's job)."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    if token.startswith("mlk_"):
        return _API_TOKEN.fullmatch(token) is not None
    if not secret_key:
        return False
    try:
        jwt.decode(token, secret_key, algorithms=["HS256"], options={"require": ["exp"], "verify_aud": False})
    except jwt.PyJWTError:
        return False
    return True


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


async def _send_json(send: Send, status: int, body: dict[str, object]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                # The rest of the body stays unread: the connection cannot carry another request.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class RequestBodyGuard:
    """Pure ASGI middleware: no body before a credential, no body beyond the route's limit (see module doc)."""

    def __init__(self, app: ASGIApp, policy: BodyPolicy, stats: BodyStats = STATS) -> None:
        self.app = app
        self.policy = policy
        self.stats = stats
        self._secret: str | None = None

    def _secret_key(self) -> str:
        # Resolved on first use: with no configured key it lives in data_dir, which may not exist at start-up.
        if self._secret is None:
            self._secret = self.policy.secret_key()
        return self._secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        headers = Headers(scope=scope)
        length = _content_length(headers)
        # HTTP/1.1: a body is announced by Content-Length or Transfer-Encoding; without either there is none
        # to withhold (the real receive() then only reports the end of the request or a disconnect).
        has_body = "transfer-encoding" in headers or (length or 0) > 0
        public = (method, path) in self.policy.public
        if has_body and not public and not has_credential(headers, self._secret_key()):
            self.stats.add("withheld")
            await self.app(scope, _withheld_receive(), _closing(send))
            return
        limit = self.policy.limit_for(method, path)
        if length is not None and length > limit.max_bytes:
            self.stats.add("refused")
            await _send_json(send, 413, error_body(limit.message, "payload_too_large"))
            return
        await _LimitedExchange(self.app, limit, self.stats)(scope, receive, send)


def _closing(send: Send) -> Send:
    """A send() that marks the answer `Connection: close`: the server then closes the connection after the answer
    instead of reading (and discarding) the rest of a body nobody will take."""

    async def closing_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return closing_send


def _withheld_receive() -> Receive:
    """A receive() that reports an empty body, never touching the connection; later calls wait, as the server's
    own receive() waits for a disconnect (a streaming answer listens for one and is cancelled when it ends)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.Event().wait()
        raise AssertionError("unreachable")  # pragma: no cover

    return receive


class _LimitedExchange:
    """One request: count body bytes as they are taken, and swap the app's answer for a 413 once past the limit."""

    def __init__(self, app: ASGIApp, limit: Limit, stats: BodyStats) -> None:
        self.app, self.limit, self.stats = app, limit, stats
        self.received = 0
        self.too_large = False
        self.started = False  # a response start went out (ours or the app's)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def limited_receive() -> Message:
            if self.too_large:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                self.received += size
                self.stats.add("bytes_received", size)
                if self.received > self.limit.max_bytes:
                    self.too_large = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if self.too_large:
                # The app answers its failed body read (a 400, a disconnect...): answer 413 in its place, once.
                if not self.started:
                    await self._refuse(send)
                return
            if message["type"] == "http.response.start":
                self.started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not self.too_large:
                raise
            if not self.started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        self.started = True
        self.stats.add("refused")
        await _send_json(send, 413, error_body(self.limit.message, "payload_too_large"))
