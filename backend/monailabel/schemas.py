"""MONAI Label bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class TokenOut(BaseModel):
    """A bearer token as MONAI Label's client expects it."""

    access_token: str
    token_type: str = "Bearer"


class SampleRequest(BaseModel):
    """The body of an active-learning request."""

    client_id: str = Field(default="user-xyz", max_length=200)


class SampleOut(BaseModel):
    """The next image for the client."""

    id: str
    name: str
    path: str
    checksum: str | None = None
    strategy: str


class LabelParams(BaseModel):
    """The `params` JSON of a label save."""

    client_id: str = Field(default="user-xyz", max_length=200)
    label_info: list[dict[str, Any]] | None = None
