"""Request and response bodies of the project endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.core.ids import Id
from backend.imaging import dicom_codes


class StructureIn(BaseModel):
    """A structure of a custom label schema."""

    name: str
    label_value: int
    color: str = "#888888"
    group: str = ""
    inside: str | None = None
    aliases: list[str] = Field(default_factory=list)
    code: dict[str, Any] | None = Field(
        default=None,
        description="DICOM SEG code: {category, type, modifier?, region?}, each {scheme, value, meaning}; "
        "default: the SNOMED CT code of the structure name from maskloop's table, else the private scheme 99MASKLOOP",
    )


class ProjectCreate(BaseModel):
    """A new project; without structures it gets the PanTS schema."""

    slug: str = Field(max_length=63)
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    schema_name: str | None = Field(default=None, max_length=100)
    structures: list[StructureIn] | None = None


class ProjectOut(BaseModel):
    """A project and the caller's role in it."""

    id: int
    slug: str
    name: str
    description: str
    role: str
    created_at: datetime
    settings: dict[str, Any]


class StructureOut(BaseModel):
    """A structure of the project's schema."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    label_value: int
    name: str
    position: int
    color: str
    group: str
    inside: str | None
    aliases: list[str]
    code: dict[str, Any] | None = Field(
        default=None,
        description="DICOM SEG code of the structure: the schema's own, else the standard table's by name (SNOMED "
        "CT); None only for a structure with no standard code (the private scheme 99MASKLOOP is used for it)",
    )

    @model_validator(mode="after")
    def _standard_code(self) -> StructureOut:
        if self.code is None:
            self.code = dicom_codes.default_code_json(self.name)
        return self


class SchemaOut(BaseModel):
    """The project's label schema."""

    name: str
    structures: list[StructureOut]


class MemberIn(BaseModel):
    """Add a member by e-mail or id, with a role."""

    email: str | None = None
    user_id: Id | None = None
    role: str


class MemberOut(BaseModel):
    """A member and their role."""

    user_id: int
    email: str
    display_name: str
    role: str
