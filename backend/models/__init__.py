"""ORM tables. Import from here so Alembic sees every table."""

from backend.core.db import Base
from backend.models.attention import ApprovalDice, AttentionMap, Prediction, TrainingRound
from backend.models.audit import AuditEvent
from backend.models.auth import AuthSession, LoginThrottle
from backend.models.dashboard import DashboardDecision, DashboardTotal, DashboardVolume
from backend.models.evaluation import EvaluationCase, EvaluationDetection, EvaluationRun
from backend.models.imports import ImportCase, ImportRun
from backend.models.jobs import Job
from backend.models.labels import LabelDraft, LabelVersion, LabelVersionStructure
from backend.models.monailabel import MonaiLabelClient
from backend.models.pacs import PacsIdentity, PacsSeries, PacsSource
from backend.models.projects import LabelSchema, Membership, Project, Structure
from backend.models.read_events import ReadEvent
from backend.models.registry import Model, ModelDecision, ModelVersion
from backend.models.scans import Scan
from backend.models.users import ApiToken, User
from backend.models.workflow import (
    ActivityDaily,
    QAFinding,
    ReaderSet,
    ReaderSetMember,
    Review,
    ReviewComment,
    ScanTask,
    TaskTransition,
)

__all__ = [
    "ActivityDaily",
    "ApiToken",
    "ApprovalDice",
    "AttentionMap",
    "AuditEvent",
    "AuthSession",
    "Base",
    "DashboardDecision",
    "DashboardTotal",
    "DashboardVolume",
    "EvaluationCase",
    "EvaluationDetection",
    "EvaluationRun",
    "ImportCase",
    "ImportRun",
    "Job",
    "LabelDraft",
    "LabelSchema",
    "LabelVersion",
    "LabelVersionStructure",
    "LoginThrottle",
    "Membership",
    "Model",
    "ModelDecision",
    "ModelVersion",
    "MonaiLabelClient",
    "PacsIdentity",
    "PacsSeries",
    "PacsSource",
    "Prediction",
    "Project",
    "QAFinding",
    "ReadEvent",
    "ReaderSet",
    "ReaderSetMember",
    "Review",
    "ReviewComment",
    "Scan",
    "ScanTask",
    "Structure",
    "TaskTransition",
    "TrainingRound",
    "User",
]
