"""A project's DICOMweb source: configured by its leads (the host on the allow-list), the password encrypted at
rest with Fernet (the key from the settings) and never returned, read back into an Endpoint only to talk to it."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.config import Settings
from backend.core.errors import InvalidInput, NotFound
from backend.models import PacsSource, Project, User
from backend.pacs.service.client import Endpoint, check_url


def _fernet(settings: Settings) -> Fernet:
    """The credentials cipher: the configured Fernet key, or one derived from the server's secret key (HKDF)."""
    key = settings.pacs_credentials_key.get_secret_value()
    if key:
        try:
            return Fernet(key.encode())
        except ValueError as exc:
            raise InvalidInput(
                "MASKLOOP_PACS_CREDENTIALS_KEY is not a Fernet key (urlsafe base64 of 32 bytes)"
            ) from exc
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"maskloop pacs credentials").derive(
        settings.resolved_secret_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt(settings: Settings, password: str) -> str:
    """A password as a Fernet token (authenticated encryption)."""
    return _fernet(settings).encrypt(password.encode()).decode()


def decrypt(settings: Settings, token: str) -> str:
    """The password of a Fernet token; 422 when the key changed since it was stored."""
    try:
        return _fernet(settings).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise InvalidInput(
            "the stored PACS password cannot be decrypted (the credentials key changed); configure the source again"
        ) from exc


def find_source(db: Session, project_id: int) -> PacsSource | None:
    """The project's source, or None."""
    return db.scalar(select(PacsSource).where(PacsSource.project_id == project_id))


def get_source(db: Session, project_id: int) -> PacsSource:
    """The project's source; 404 when none is configured."""
    source = find_source(db, project_id)
    if source is None:
        raise NotFound("this project has no PACS configured (PUT /api/projects/{id}/pacs)", project_id=project_id)
    return source


def configure(
    db: Session,
    settings: Settings,
    project: Project,
    actor: User | None,
    *,
    base_url: str,
    username: str | None,
    password: str | None,
    deidentify: bool,
) -> PacsSource:
    """Create or replace the project's source. `password` None keeps the stored one (for the same username), ''
    removes it. The URL's host must be on the allow-list (403), the URL an http(s) URL (422)."""
    url = check_url(base_url, settings.pacs_allowed_hosts)
    user = (username or "").strip() or None
    source = find_source(db, project.id)
    created = source is None
    if source is None:
        source = PacsSource(project_id=project.id, salt=secrets.token_hex(32), created_by=actor.id if actor else None)
        db.add(source)
    if password is not None:
        source.secret = encrypt(settings, password) if password else None
    elif source.username != user:
        source.secret = None  # a stored password never travels to another account
    source.base_url, source.username, source.deidentify = url, user, deidentify
    source.updated_at = datetime.now(UTC)
    db.flush()
    audit.record(
        db,
        actor_user_id=actor.id if actor else None,
        action="pacs.configure",
        entity_type="pacs_source",
        entity_id=source.id,
        project_id=project.id,
        details={
            "base_url": url,
            "username": user,
            "password": "set" if source.secret else "none",
            "deidentify": deidentify,
            "created": created,
        },
    )
    return source


def endpoint_of(source: PacsSource, settings: Settings) -> Endpoint:
    """The source as an Endpoint to talk to (host checked against the allow-list as it is now, password decrypted)."""
    check_url(source.base_url, settings.pacs_allowed_hosts)
    password = decrypt(settings, source.secret) if source.secret else None
    return Endpoint(source.base_url, source.username, password, timeout_s=settings.pacs_timeout_s)
