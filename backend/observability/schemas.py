"""Answers of the observability routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class CheckOut(BaseModel):
    """One dependency's check."""

    ok: bool
    seconds: float = Field(description="how long the check took")
    error: str | None = Field(default=None, description="why it failed")


class ReadinessOut(BaseModel):
    """Every dependency answered: this process can serve requests and send jobs."""

    status: Literal["ready"]
    checks: dict[str, CheckOut] = Field(description="database, broker and blob_store")
