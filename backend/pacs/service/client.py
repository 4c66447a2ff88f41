"""DICOMweb access to a project's PACS: the administrator's host allow-list, one client per use (HTTP basic
credentials, timeouts, no redirects, no silent retries) and a PACS's failures turned into domain errors.

The allow-list is checked when a source is configured and again before every request, so removing a host from
`MASKLOOP_PACS_ALLOWED_HOSTS` stops its use at once. Redirects are never followed: a PACS (or anything answering
in its name) cannot bounce the server to an address that is not on the list.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from backend.core.errors import GatewayTimeout, InvalidInput, NotFound, PermissionDenied

_SCHEMES = {"http": 80, "https": 443}
_SEND_CHUNK = 1 << 20  # bytes handed to the socket at a time while a STOW body streams


class PacsUnreachable(GatewayTimeout):
    """The PACS did not answer (refused connection, unknown host, timeout) or failed on its side (HTTP 5xx)."""

    code = "pacs_unreachable"


class PacsRefused(InvalidInput):
    """The PACS answered but refused the request (wrong credentials, a malformed query, a rejected instance)."""

    code = "pacs_refused"


class HostNotAllowed(PermissionDenied):
    """The source names a host that is not on the administrator's allow-list."""

    code = "pacs_host_not_allowed"


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach a PACS: its DICOMweb base URL and HTTP basic credentials (kept out of reprs)."""

    base_url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0

    @property
    def host(self) -> str:
        """host[:port] of the base URL, as messages name the PACS."""
        return urlsplit(self.base_url).netloc


def _port_of(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(text)
    return int(text)


def parse_allow_list(text: str) -> list[tuple[str, int | None]]:
    """The allow-list entries as (lower-case host, port or None for any port); unparsable entries are skipped."""
    entries: list[tuple[str, int | None]] = []
    for raw in text.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        try:
            if item.startswith("["):  # [v6] or [v6]:port
                host, _, rest = item[1:].partition("]")
                port = _port_of(rest[1:]) if rest.startswith(":") else None
            elif item.count(":") == 1:
                host, _, port_text = item.partition(":")
                port = _port_of(port_text)
            elif ":" in item:  # a bare IPv6 address: any port
                host, port = str(ipaddress.ip_address(item)), None
            else:
                host, port = item, None
        except ValueError:
            continue
        if host:
            entries.append((host, port))
    return entries


def check_url(url: str, allowed_hosts: str) -> str:
    """The normalised DICOMweb base URL; 422 when it is not an http(s) URL, 403 when its host is not allowed."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"{text!r} is not a valid URL ({exc})", field="base_url") from exc
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES or not parts.hostname:
        raise InvalidInput(
            f"{text!r} is not an http(s) URL of a DICOMweb server (e.g. https://pacs.example.org/dicom-web)",
            field="base_url",
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("put the PACS credentials in username and password, not in the URL", field="base_url")
    if parts.query or parts.fragment:
        raise InvalidInput("the DICOMweb base URL takes no query or fragment", field="base_url")
    host = parts.hostname.lower()
    effective = port or _SCHEMES[scheme]
    if not any(host == h and (p is None or p == effective) for h, p in parse_allow_list(allowed_hosts)):
        shown = f"{host}:{effective}"
        raise HostNotAllowed(
            f"the PACS host {shown} is not on this server's allow-list; ask the platform administrator to add it "
            "to MASKLOOP_PACS_ALLOWED_HOSTS",
            host=shown,
        )
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


def session_of(endpoint: Endpoint) -> requests.Session:
    """A requests session for the endpoint: its credentials, redirects never followed."""
    session = requests.Session()
    session.max_redirects = 0  # a redirect raises TooManyRedirects: never followed
    if endpoint.username or endpoint.password:
        session.auth = (endpoint.username or "", endpoint.password or "")
    return session


def connect(endpoint: Endpoint, allowed_hosts: str) -> DICOMwebClient:
    """A DICOMweb client of the endpoint (its host checked against the allow-list again)."""
    url = check_url(endpoint.base_url, allowed_hosts)
    client = DICOMwebClient(url, session=session_of(endpoint), timeout=endpoint.timeout_s)
    client.set_http_retry_params(retry=False)  # a refused connection is reported at once, not after backoffs
    return client


def qido(endpoint: Endpoint, allowed_hosts: str, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """A QIDO-RS query with its matching values sent as written: the wildcards `*` and `?` stay literal (valid in
    a URL's query), as some servers (Orthanc 1.10) match on the undecoded text. Call inside `answering`."""
    url = check_url(endpoint.base_url, allowed_hosts)
    query = "&".join(f"{quote(key, safe='')}={quote(value, safe='*?,')}" for key, value in params.items())
    with session_of(endpoint) as session:
        response = session.get(
            f"{url}/{path}?{query}", headers={"Accept": "application/dicom+json"}, timeout=endpoint.timeout_s
        )
    response.raise_for_status()
    if response.status_code == 204 or not response.content:
        return []
    found = response.json()
    if not isinstance(found, list):
        raise ValueError("a QIDO-RS answer must be a JSON array")
    return found


class _Multipart:
    """A multipart/related body of DICOM files, streamed from the files' own bytes (never joined into one buffer)
    in slices of `_SEND_CHUNK`, with its length known (a Content-Length request, not chunked encoding)."""

    def __init__(self, parts: Sequence[bytes], boundary: str) -> None:
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self._pieces: list[bytes] = []
        for part in parts:
            self._pieces += [head, part, b"\r\n"]
        self._pieces.append(f"--{boundary}--\r\n".encode())

    def __len__(self) -> int:
        return sum(len(piece) for piece in self._pieces)

    def __iter__(self) -> Iterator[memoryview]:
        for piece in self._pieces:
            view = memoryview(piece)
            for start in range(0, len(view), _SEND_CHUNK):
                yield view[start : start + _SEND_CHUNK]


def store(endpoint: Endpoint, allowed_hosts: str, files: Sequence[bytes]) -> Dataset:
    """STOW-RS of DICOM Part 10 files in one request; the PACS's store report (Failed/Referenced SOP sequences).
    Call inside `answering`."""
    url = check_url(endpoint.base_url, allowed_hosts)
    boundary = f"maskloop-{secrets.token_hex(16)}"
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary="{boundary}"',
        "Accept": "application/dicom+json",
    }
    with session_of(endpoint) as session:
        # Memoryviews of the files (requests' types name only bytes; http.client sends any buffer).
        body = cast(Iterable[bytes], _Multipart(files, boundary))
        response = session.post(f"{url}/studies", data=body, headers=headers, timeout=endpoint.timeout_s)
    response.raise_for_status()
    if not response.content:
        return Dataset()
    return Dataset.from_json(response.json())


def _status_error(endpoint: Endpoint, response: requests.Response, what: str) -> Exception:
    status = response.status_code
    where = f"the PACS at {endpoint.host}"
    if status in (401, 403):
        return PacsRefused(f"{where} refused the credentials (HTTP {status}) for {what}", pacs_status=status)
    if status == 404:
        return NotFound(f"{what}: not found on {where}", pacs_status=status)
    if status >= 500:
        return PacsUnreachable(f"{where} failed on {what} (HTTP {status})", pacs_status=status)
    text = (response.text or "")[:200].strip()
    return PacsRefused(f"{where} refused {what} (HTTP {status}{': ' + text if text else ''})", pacs_status=status)


@contextmanager
def answering(endpoint: Endpoint, what: str) -> Iterator[None]:
    """Run DICOMweb calls, turning the PACS's failures into domain errors that name it and the request."""
    where = f"the PACS at {endpoint.host}"
    try:
        yield
    except requests.HTTPError as exc:
        if exc.response is None:
            raise PacsUnreachable(f"{where} did not answer {what}: {exc}") from exc
        raise _status_error(endpoint, exc.response, what) from exc
    except requests.TooManyRedirects as exc:
        raise PacsRefused(
            f"{where} answered {what} with a redirect, which maskloop never follows; configure the final URL"
        ) from exc
    except requests.Timeout as exc:
        raise PacsUnreachable(f"{where} did not answer {what} within {endpoint.timeout_s:g} s") from exc
    except requests.ConnectionError as exc:
        raise PacsUnreachable(f"{where} cannot be reached for {what} (connection failed: {_reason(exc)})") from exc
    except requests.RequestException as exc:
        raise PacsUnreachable(f"{where} could not be asked for {what}: {exc}") from exc
    except (ValueError, KeyError) as exc:
        raise PacsUnreachable(f"{where} gave an answer to {what} that is not valid DICOMweb: {exc}") from exc


def _reason(exc: requests.ConnectionError) -> str:
    """The innermost reason of a connection failure (refused, unknown host), without the URL's internals."""
    inner: BaseException = exc
    while inner.__context__ is not None and inner.__context__ is not inner:
        inner = inner.__context__
    text = str(inner) or type(inner).__name__
    return text[:200]
