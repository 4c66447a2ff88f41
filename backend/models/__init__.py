"""ORM tables. Import from here so Alembic sees every table."""

from backend.core.db import Base
from backend.models.audit import AuditEvent
from backend.models.labels import LabelVersion, LabelVersionStructure
from backend.models.projects import LabelSchema, Membership, Project, Structure
from backend.models.scans import Scan
from backend.models.users import ApiToken, User

__all__ = [
    "ApiToken",
    "AuditEvent",
    "Base",
    "LabelSchema",
    "LabelVersion",
    "LabelVersionStructure",
    "Membership",
    "Project",
    "Scan",
    "Structure",
    "User",
]
