"""Model registration schemas."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from controlplane.fields import Name, OptionalReason, Text
from controlplane.pagination import Page


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    path: Text = Field(min_length=1, max_length=4096,
                       description="A local transformers folder under one of the allowed model roots.")
    description: Text | None = Field(None, max_length=2000)
    reason: OptionalReason = None


class ModelPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    path: str
    content_hash: str
    architecture: str | None
    model_type: str | None
    size_bytes: int
    description: str | None
    created_at: datetime
    created_by: str


class ModelsPublic(Page[ModelPublic]):
    pass


class ModelFilters(BaseModel):
    name: Text | None = None
    content_hash: Text | None = None
